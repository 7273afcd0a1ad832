//! The checkpoint's tensors, once: every name, shape and element type a config implies, in the
//! released layout's order. Validation checks a checkpoint against it, loading then reads by
//! name without checking again, and `synth` writes exactly these tensors.

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::weights::{DType, ShardIndex};

/// What a tensor's elements are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// bf16 matrices (attention, router, embeddings, lm_head).
    Bf16,
    /// Small vectors and biases: bf16 in the release, f32 accepted.
    Float,
    /// MXFP4 code blocks or e8m0 scales.
    U8,
}

/// What a tensor is for (the part of its name that says so), for writers that need to know
/// more than the shape, such as `synth` choosing value ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Embedding,
    /// An RMSNorm gain.
    Norm,
    /// A projection matrix whose rows take `fan_in` inputs.
    Matrix {
        fan_in: usize,
    },
    RouterMatrix,
    RouterBias,
    Bias,
    Sinks,
    Mxfp4Blocks,
    /// Scales of MXFP4 rows of `fan_in` values.
    Mxfp4Scales {
        fan_in: usize,
    },
}

/// One tensor of the checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub elem: Elem,
    pub role: Role,
}

/// Every tensor `c` implies, in the released layout's order.
pub fn checkpoint_tensors(c: &ModelConfig) -> Vec<TensorSpec> {
    let (h, v) = (c.hidden as usize, c.vocab as usize);
    let (nh, nkv, d) = (c.heads as usize, c.kv_heads as usize, c.head_dim as usize);
    let (e, i) = (c.experts as usize, c.inter as usize);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, elem, role| {
        out.push(TensorSpec {
            name,
            shape,
            elem,
            role,
        })
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        Elem::Bf16,
        Role::Embedding,
    );
    for l in 0..c.layers as usize {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        add(
            p("input_layernorm.weight"),
            vec![h],
            Elem::Float,
            Role::Norm,
        );
        for (n, rows) in [("q", nh * d), ("k", nkv * d), ("v", nkv * d)] {
            let w = p(&format!("self_attn.{n}_proj.weight"));
            add(w, vec![rows, h], Elem::Bf16, Role::Matrix { fan_in: h });
            if c.attention_bias {
                let b = p(&format!("self_attn.{n}_proj.bias"));
                add(b, vec![rows], Elem::Float, Role::Bias);
            }
        }
        let o_role = Role::Matrix { fan_in: nh * d };
        add(
            p("self_attn.o_proj.weight"),
            vec![h, nh * d],
            Elem::Bf16,
            o_role,
        );
        if c.attention_bias {
            add(p("self_attn.o_proj.bias"), vec![h], Elem::Float, Role::Bias);
        }
        add(p("self_attn.sinks"), vec![nh], Elem::Float, Role::Sinks);
        add(
            p("post_attention_layernorm.weight"),
            vec![h],
            Elem::Float,
            Role::Norm,
        );
        add(
            p("mlp.router.weight"),
            vec![e, h],
            Elem::Bf16,
            Role::RouterMatrix,
        );
        add(p("mlp.router.bias"), vec![e], Elem::Float, Role::RouterBias);
        let x = |n: &str| p(&format!("mlp.experts.{n}"));
        let blocks = Role::Mxfp4Blocks;
        add(
            x("gate_up_proj_blocks"),
            vec![e, 2 * i, h / 32, 16],
            Elem::U8,
            blocks,
        );
        let scales = Role::Mxfp4Scales { fan_in: h };
        add(
            x("gate_up_proj_scales"),
            vec![e, 2 * i, h / 32],
            Elem::U8,
            scales,
        );
        add(
            x("gate_up_proj_bias"),
            vec![e, 2 * i],
            Elem::Float,
            Role::Bias,
        );
        add(
            x("down_proj_blocks"),
            vec![e, h, i / 32, 16],
            Elem::U8,
            blocks,
        );
        let scales = Role::Mxfp4Scales { fan_in: i };
        add(x("down_proj_scales"), vec![e, h, i / 32], Elem::U8, scales);
        add(x("down_proj_bias"), vec![e, h], Elem::Float, Role::Bias);
    }
    add("model.norm.weight".into(), vec![h], Elem::Float, Role::Norm);
    if !c.tie_embeddings {
        let role = Role::Matrix { fan_in: h };
        add("lm_head.weight".into(), vec![v, h], Elem::Bf16, role);
    }
    out
}

/// Checks every tensor of the table against the shards' headers (present, element type, shape)
/// and returns their total size in bytes; the first problem is an error naming the tensor and file.
pub fn check(index: &ShardIndex, c: &ModelConfig) -> Result<u64> {
    let mut total = 0u64;
    for spec in checkpoint_tensors(c) {
        let t = index.info(&spec.name)?;
        let file = index.file_of(t);
        let ok = match spec.elem {
            Elem::Bf16 => t.dtype == DType::BF16,
            Elem::U8 => t.dtype == DType::U8,
            Elem::Float => matches!(t.dtype, DType::BF16 | DType::F32),
        };
        if !ok {
            return Err(Error::Weights(format!(
                "{file}: tensor `{}` is {}, expected {}",
                spec.name,
                t.dtype,
                match spec.elem {
                    Elem::Bf16 => "BF16",
                    Elem::U8 => "U8",
                    Elem::Float => "BF16 or F32",
                }
            )));
        }
        if t.shape != spec.shape {
            return Err(Error::Shape {
                tensor: spec.name,
                file: file.to_string(),
                expected: spec.shape,
                got: t.shape.clone(),
            });
        }
        total += t.bytes();
    }
    Ok(total)
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use super::*;

    /// gpt-oss-20b's table: its tensor count and its size (DESIGN.md: 13.8 GB in 3 shards).
    #[test]
    fn the_20b_table_has_the_released_tensors() {
        let spec = crate::synth::SynthSpec::preset("20b").unwrap();
        let cfg = crate::model::HfConfig::from_json(&spec.config_json().to_string())
            .unwrap()
            .validate()
            .unwrap();
        let table = checkpoint_tensors(&cfg);
        assert_eq!(table.len(), 2 + 24 * 19 + 1);
        let bytes: usize = table
            .iter()
            .map(|t| t.shape.iter().product::<usize>() * if t.elem == Elem::U8 { 1 } else { 2 })
            .sum();
        assert!((13.7e9..13.9e9).contains(&(bytes as f64)), "{bytes}");
        let names: std::collections::HashSet<_> = table.iter().map(|t| &t.name).collect();
        assert_eq!(names.len(), table.len(), "names are unique");
    }
}
