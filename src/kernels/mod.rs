//! One module per WGSL kernel family: the parameter block that mirrors the shader's `Params`, a
//! builder that checks shapes and returns ready [`Dispatch`](crate::gpu::Dispatch)es, and tests
//! against a plain Rust reference.
//!
//! Shapes are written as `[T, H]`: T tokens, H hidden, NH/NKV heads, D head dim, E experts,
//! K experts per token, I intermediate, V vocab.

pub mod attention;
pub mod embed;
pub mod linear;
pub mod moe;
pub mod rmsnorm;
pub mod rope;
pub mod router;
pub mod router_fold;
pub mod sample;

use crate::gpu::{Count, Gpu, ShaderKey};

/// The key for a kernel that has a SUBGROUPS variant, using it where the device allows.
fn key(gpu: &Gpu, file: &'static str, entry: &'static str) -> ShaderKey {
    ShaderKey::new(file, entry).define_if("SUBGROUPS", gpu.caps.subgroups)
}

/// The key for a row-group kernel (`common/row_group.wgsl`): subgroup sums only where no subgroup
/// is wider than a row group.
fn row_group_key(gpu: &Gpu, file: &'static str, entry: &'static str) -> ShaderKey {
    let fits = (1..=32).contains(&gpu.caps.subgroup_max);
    ShaderKey::new(file, entry).define_if("SUBGROUPS", gpu.caps.subgroups && fits)
}

/// Passes with at most this many tokens run the matrix-vector kernels (`linear_vec`, whose
/// workgroups serve up to its MAX_T tokens each, and `moe_vec`, one workgroup row per slot for
/// one token, per routed expert for more); larger ones the tiled kernels that reuse each weight
/// load across more tokens. On the H200 the tiled kernels only win from about 48 tokens on
/// (PERF.md v0.13).
pub const VEC_MAX_TOKENS: u32 = 32;

/// Which step count a kernel's rows follow, as `step_count()` in `common/step.wgsl` numbers them.
fn count_index(c: Count) -> u32 {
    match c {
        Count::Tokens
        | Count::One
        | Count::Fixed(_)
        | Count::TokenSplits
        | Count::Splits
        | Count::Biased => 0,
        Count::Outputs => 1,
        Count::Slots => 2,
    }
}

#[cfg(test)]
pub(crate) mod testing;

/// Every shader variant the kernels can ask for, for the validation sweep.
pub fn all_variants() -> Vec<ShaderKey> {
    let mut out = Vec::new();
    for sg in [false, true] {
        let k = |f, e| ShaderKey::new(f, e).define_if("SUBGROUPS", sg);
        out.push(k("rmsnorm.wgsl", "main"));
        out.push(k("linear.wgsl", "main"));
        out.push(k("linear.wgsl", "main").define_if("ONE_TOKEN", true));
        out.push(k("sample.wgsl", "pick"));
        out.push(k("router.wgsl", "main"));
        out.push(k("router.wgsl", "partial").define_if("PARTIAL", true));
        for multi in [false, true] {
            let k = |f, e| k(f, e).define_if("MULTI", multi);
            for norm in [false, true] {
                out.push(k("linear_vec.wgsl", "main").define_if("NORM", norm));
            }
            out.push(k("linear_vec.wgsl", "short"));
            for f16 in [false, true] {
                out.push(
                    k("linear_vec.wgsl", "main")
                        .define_if("NORM", true)
                        .define_if("ROPE", true)
                        .define_if("KV_F16", f16),
                );
            }
        }
        for (grouped, few) in [(false, false), (true, false), (true, true)] {
            for f16 in [false, true] {
                for (entry, define) in [("gate_up", "GATE_UP"), ("down", "DOWN")] {
                    let key = moe::vec_key(k("moe_vec.wgsl", entry), define, grouped, few, f16);
                    if !out.contains(&key) {
                        out.push(key);
                    }
                }
            }
        }
        for folded in [false, true] {
            out.push(
                k("moe_vec.wgsl", "route_slots")
                    .define_if("ROUTE", true)
                    .define_if("FOLDED", folded),
            );
        }
        for one_token in [false, true] {
            out.push(
                moe::vec_key(k("moe_vec.wgsl", "gate_up"), "GATE_UP", false, false, false)
                    .define_if("FOLDED", true)
                    .define_if("ONE_TOKEN", one_token),
            );
        }
        out.push(k("router_fold.wgsl", "project"));

        out.push(ShaderKey::new("moe.wgsl", "route").define_if("ROUTE", true));
        out.push(ShaderKey::new("moe.wgsl", "combine").define_if("COMBINE", true));
    }
    // Each tile kernel with k whole and cut, and with k cut also with `extra`, which only
    // exists then: the tensor-core tiles' sums straight into part, the staged tiles' fused norm.
    let mut tiles = |key: ShaderKey, extra: Option<&'static str>| {
        out.push(key.clone());
        let cut = key.define_if("SPLIT_K", true);
        if let Some(extra) = extra {
            out.push(cut.clone().define_if(extra, true));
        }
        out.push(cut);
    };
    for narrow in [false, true] {
        for inputs in [linear::CoopInputs::F16, linear::CoopInputs::Split] {
            tiles(linear::coop_key(narrow, inputs), Some("DIRECT_DRAIN"));
        }
    }
    tiles(linear::simt_key(), None);
    for (sg, few) in [(false, false), (false, true), (true, false), (true, true)] {
        tiles(linear::staged_key(sg, few), Some("NORM"));
    }
    for rope in [None, Some(false), Some(true)] {
        for norm in [false, true] {
            out.push(linear::sum_splits_key(rope).define_if("NORM", norm));
        }
    }
    for (coop, sparse) in [(false, false), (true, false), (true, true)] {
        out.push(moe::tiled_key("gate_up", "GATE_UP", coop, sparse));
        out.push(moe::tiled_key("down", "DOWN", coop, sparse));
    }
    out.push(moe::pack_key());
    out.push(ShaderKey::new("embed.wgsl", "main"));
    out.push(ShaderKey::new("router_fold.wgsl", "prepare").define_if("PREPARE", true));
    out.push(ShaderKey::new("f16_probe.wgsl", "main").define_if("F16_PRODUCTS", true));
    out.push(ShaderKey::new("mxfp4_layout.wgsl", "main"));
    out.push(ShaderKey::new("sample.wgsl", "scan").define_if("SCAN", true));
    out.push(ShaderKey::new("sample.wgsl", "bias").define_if("BIAS", true));
    for f16 in [false, true] {
        out.push(ShaderKey::new("rope.wgsl", "main").define_if("KV_F16", f16));
        out.push(attention::prefill_key("main", f16));
        out.push(attention::prefill_key("tiled", f16));
        for sg in [false, true] {
            for heads in [
                attention::SplitHeads::One,
                attention::SplitHeads::Two,
                attention::SplitHeads::Group,
            ] {
                // split_key falls back to `split` where key groups do not apply.
                for key_groups in [false, true] {
                    let key = attention::split_key(heads, f16, sg, key_groups);
                    if !out.contains(&key) {
                        out.push(key);
                    }
                }
            }
            if sg {
                out.push(attention::split_key(
                    attention::SplitHeads::Staged,
                    f16,
                    true,
                    true,
                ));
            }
        }
    }
    out.push(attention::prefill_key("coop", true));
    out.push(ShaderKey::new("attention_split.wgsl", "merge").define_if("MERGE", true));
    out
}

#[cfg(test)]
mod validate {
    /// Every variant parses and validates with naga, without a GPU.
    #[test]
    fn every_shader_variant_validates() {
        let mut files: Vec<&str> = super::all_variants().iter().map(|k| k.file).collect();
        for f in crate::gpu::shader::kernel_files() {
            assert!(files.contains(&f), "{f} has no variant in all_variants()");
        }
        files.dedup();
        for key in super::all_variants() {
            let src = key.source().unwrap();
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{}: {}", key.label(), e.emit_to_string(&src)));
            let mut v = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            );
            v.subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all());
            if let Err(e) = v.validate(&module) {
                panic!("{}: {}", key.label(), e.emit_to_string(&src));
            }
            assert!(
                module.entry_points.iter().any(|e| e.name == key.entry),
                "{}",
                key.label()
            );
        }
    }
}
