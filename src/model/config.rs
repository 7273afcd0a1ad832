//! config.json: the Hugging Face fields as written (`HfConfig`, every field optional) and the
//! validated shape the runtime uses (`ModelConfig`). Nothing about gpt-oss-20b is hard-coded.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, json_fault};

/// The YaRN parameters under `rope_scaling` (or `rope_parameters` as newer transformers write).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct HfRope {
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub factor: Option<f64>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub original_max_position_embeddings: Option<u64>,
    pub truncate: Option<bool>,
    pub attention_factor: Option<f64>,
    pub rope_theta: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct HfQuantization {
    pub quant_method: Option<String>,
    pub modules_to_not_convert: Option<Vec<String>>,
}

/// Token ids that may be given as one number or a list.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
#[serde(expecting = "expected a token id or a list of token ids")]
pub enum Ids {
    One(u32),
    Many(Vec<u32>),
}

impl Ids {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Ids::One(i) => vec![*i],
            Ids::Many(v) => v.clone(),
        }
    }
}

/// config.json as Hugging Face writes it for `GptOssForCausalLM`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct HfConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub hidden_size: Option<u32>,
    pub intermediate_size: Option<u32>,
    pub num_hidden_layers: Option<u32>,
    pub num_attention_heads: Option<u32>,
    pub num_key_value_heads: Option<u32>,
    pub head_dim: Option<u32>,
    pub num_local_experts: Option<u32>,
    pub num_experts_per_tok: Option<u32>,
    pub experts_per_token: Option<u32>,
    pub vocab_size: Option<u32>,
    pub sliding_window: Option<u32>,
    pub layer_types: Option<Vec<String>>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<HfRope>,
    pub rope_parameters: Option<HfRope>,
    pub max_position_embeddings: Option<u32>,
    pub rms_norm_eps: Option<f64>,
    pub swiglu_limit: Option<f64>,
    pub swiglu_alpha: Option<f64>,
    pub attention_bias: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub eos_token_id: Option<Ids>,
    pub pad_token_id: Option<u32>,
    pub quantization_config: Option<HfQuantization>,
}

/// YaRN RoPE, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub head_dim: u32,
    /// None for plain RoPE.
    pub yarn: Option<Yarn>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub original_max: u64,
    pub truncate: bool,
    pub attention_factor: f64,
}

/// The validated model shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub hidden: u32,
    pub inter: u32,
    pub layers: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub experts: u32,
    pub top_k: u32,
    pub vocab: u32,
    pub sliding_window: u32,
    /// Per layer: true for sliding-window attention, false for full attention.
    pub sliding: Vec<bool>,
    pub rope: RopeConfig,
    pub max_positions: u32,
    pub eps: f32,
    pub swiglu_limit: f32,
    pub swiglu_alpha: f32,
    pub attention_bias: bool,
    pub tie_embeddings: bool,
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
}

fn need<T: Copy>(v: Option<T>, name: &str) -> Result<T> {
    v.ok_or_else(|| Error::Config(format!("missing `{name}`")))
}

/// `v` when it is positive and finite as the f32 the kernels use (a zero, negative or huge RoPE
/// base, norm epsilon, clamp or YaRN beta would only make NaNs or zeros, silently).
fn positive_number(v: f64, name: &str) -> Result<f64> {
    if v > 0.0 && (v as f32).is_finite() {
        Ok(v)
    } else {
        let v = if v.abs() >= 1e9 {
            format!("{v:e}")
        } else {
            v.to_string()
        };
        Err(Error::Config(format!(
            "`{name}` must be a positive number (within f32's range), not {v}"
        )))
    }
}

impl HfConfig {
    pub fn from_json(text: &str) -> Result<HfConfig> {
        // The field at fault is named where there is one (`num_hidden_layers: invalid type ...`).
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let (path, message) = json_fault(e);
            let at = path.map_or(String::new(), |p| format!("{p}: "));
            Error::Config(format!(
                "not valid JSON for a gpt-oss config: {at}{message}"
            ))
        })
    }

    /// Checks every value and resolves defaults the way transformers does.
    pub fn validate(&self) -> Result<ModelConfig> {
        if let Some(t) = &self.model_type
            && t != "gpt_oss"
        {
            return Err(Error::Unsupported(format!(
                "model_type `{t}` (only gpt_oss)"
            )));
        }
        let hidden = need(self.hidden_size, "hidden_size")?;
        let inter = need(self.intermediate_size, "intermediate_size")?;
        let layers = need(self.num_hidden_layers, "num_hidden_layers")?;
        let heads = need(self.num_attention_heads, "num_attention_heads")?;
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let experts = need(self.num_local_experts, "num_local_experts")?;
        let top_k = need(
            self.num_experts_per_tok.or(self.experts_per_token),
            "num_experts_per_tok",
        )?;
        let vocab = need(self.vocab_size, "vocab_size")?;
        let sliding_window = self.sliding_window.unwrap_or(0);
        let positive = [
            ("hidden_size", hidden),
            ("intermediate_size", inter),
            ("num_hidden_layers", layers),
            ("num_attention_heads", heads),
            ("num_key_value_heads", kv_heads),
            ("head_dim", head_dim),
            ("num_local_experts", experts),
            ("num_experts_per_tok", top_k),
            ("vocab_size", vocab),
        ];
        if let Some((n, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("`{n}` must be positive")));
        }
        if hidden % 32 != 0 || inter % 32 != 0 {
            return Err(Error::Config(format!(
                "hidden_size ({hidden}) and intermediate_size ({inter}) must be multiples of 32 (MXFP4 blocks)"
            )));
        }
        if heads % kv_heads != 0 {
            return Err(Error::Config(format!(
                "num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        if head_dim % 4 != 0 || head_dim > crate::kernels::attention::MAX_HEAD_DIM {
            return Err(Error::Config(format!(
                "head_dim {head_dim} must be a multiple of 4 and at most 256"
            )));
        }
        if top_k > experts {
            return Err(Error::Config(format!(
                "num_experts_per_tok ({top_k}) exceeds num_local_experts ({experts})"
            )));
        }
        let sliding = match &self.layer_types {
            Some(types) => {
                if types.len() != layers as usize {
                    return Err(Error::Config(format!(
                        "layer_types has {} entries for {layers} layers",
                        types.len()
                    )));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(Error::Config(format!("unknown layer type `{other}`"))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            // transformers' default for gpt-oss: sliding on even layers.
            None => (0..layers).map(|i| i % 2 == 0).collect(),
        };
        if sliding.iter().any(|s| *s) && sliding_window == 0 {
            return Err(Error::Config(
                "sliding layers need a positive `sliding_window`".into(),
            ));
        }
        let rope_src = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref());
        let theta = positive_number(
            self.rope_theta
                .or(rope_src.and_then(|r| r.rope_theta))
                .unwrap_or(150000.0),
            "rope_theta",
        )?;
        let max_positions = self.max_position_embeddings.unwrap_or(131072);
        let yarn = match rope_src {
            None => None,
            Some(r) => match r.rope_type.as_deref().or(r.legacy_type.as_deref()) {
                None | Some("default") => None,
                Some("yarn") => {
                    let factor = need(r.factor, "rope_scaling.factor")?;
                    let factor = positive_number(factor, "rope_scaling.factor")?;
                    let original_max = need(
                        r.original_max_position_embeddings,
                        "rope_scaling.original_max_position_embeddings",
                    )?;
                    if original_max == 0 {
                        return Err(Error::Config(
                            "`rope_scaling.original_max_position_embeddings` must be positive"
                                .into(),
                        ));
                    }
                    // YaRN's ramp divides by ln(rope_theta) and takes the log of each beta.
                    if theta <= 1.0 {
                        return Err(Error::Config(format!(
                            "YaRN rope scaling needs rope_theta above 1, not {theta}"
                        )));
                    }
                    let beta_fast =
                        positive_number(r.beta_fast.unwrap_or(32.0), "rope_scaling.beta_fast")?;
                    let beta_slow =
                        positive_number(r.beta_slow.unwrap_or(1.0), "rope_scaling.beta_slow")?;
                    let attention_factor = r.attention_factor.unwrap_or(if factor <= 1.0 {
                        1.0
                    } else {
                        0.1 * factor.ln() + 1.0
                    });
                    Some(Yarn {
                        factor,
                        beta_fast,
                        beta_slow,
                        original_max,
                        truncate: r.truncate.unwrap_or(true),
                        attention_factor,
                    })
                }
                Some(other) => return Err(Error::Unsupported(format!("rope type `{other}`"))),
            },
        };
        if let Some(q) = &self.quantization_config
            && let Some(m) = &q.quant_method
            && m != "mxfp4"
        {
            return Err(Error::Unsupported(format!(
                "quantization `{m}` (only mxfp4)"
            )));
        }
        let eps = positive_number(self.rms_norm_eps.unwrap_or(1e-5), "rms_norm_eps")?;
        let swiglu_limit = positive_number(self.swiglu_limit.unwrap_or(7.0), "swiglu_limit")?;
        Ok(ModelConfig {
            hidden,
            inter,
            layers,
            heads,
            kv_heads,
            head_dim,
            experts,
            top_k,
            vocab,
            sliding_window,
            sliding,
            rope: RopeConfig {
                theta,
                head_dim,
                yarn,
            },
            max_positions,
            eps: eps as f32,
            swiglu_limit: swiglu_limit as f32,
            swiglu_alpha: self.swiglu_alpha.unwrap_or(1.702) as f32,
            attention_bias: self.attention_bias.unwrap_or(true),
            tie_embeddings: self.tie_word_embeddings.unwrap_or(false),
            eos: self
                .eos_token_id
                .as_ref()
                .map(Ids::to_vec)
                .unwrap_or_default(),
            pad: self.pad_token_id,
        })
    }
}

impl RopeConfig {
    /// Inverse frequencies, computed in f32 as transformers does so the rotation agrees bit for bit
    /// as far as the f32 operations allow.
    pub fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim as usize;
        let half = dim / 2;
        let base = self.theta as f32;
        let pos_freq: Vec<f32> = (0..half)
            .map(|i| base.powf((2 * i) as f32 / dim as f32))
            .collect();
        let Some(y) = &self.yarn else {
            return pos_freq.iter().map(|p| 1.0 / p).collect();
        };
        let corr = |rot: f64| {
            dim as f64 * (y.original_max as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * self.theta.ln())
        };
        let (mut low, mut high) = (corr(y.beta_fast), corr(y.beta_slow));
        if y.truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0);
        let mut high = high.min(dim as f64 - 1.0);
        if low == high {
            high += 0.001;
        }
        let (low, high) = (low as f32, high as f32);
        let factor = y.factor as f32;
        (0..half)
            .map(|i| {
                let extrapolation = 1.0 / pos_freq[i];
                let interpolation = 1.0 / (factor * pos_freq[i]);
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation_factor = 1.0 - ramp;
                interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
            })
            .collect()
    }

    /// The cos/sin table [positions, D/2], scaled by the YaRN attention factor.
    pub fn table(&self, positions: u32) -> Vec<[f32; 2]> {
        let inv = self.inv_freq();
        let scale = self
            .yarn
            .as_ref()
            .map_or(1.0, |y| y.attention_factor as f32);
        let mut out = Vec::with_capacity(positions as usize * inv.len());
        for p in 0..positions {
            for f in &inv {
                // The f32 product is what the reference rotates by; its cos/sin are then exact.
                let arg = p as f32 * f;
                out.push([
                    (arg as f64).cos() as f32 * scale,
                    (arg as f64).sin() as f32 * scale,
                ]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt_oss_20b() -> HfConfig {
        HfConfig::from_json(
            r#"{"hidden_size":2880,"intermediate_size":2880,"num_hidden_layers":24,"num_attention_heads":64,
            "num_key_value_heads":8,"head_dim":64,"num_local_experts":32,"num_experts_per_tok":4,"vocab_size":201088,
            "sliding_window":128,"rope_theta":150000,"rope_scaling":{"rope_type":"yarn","factor":32.0,"beta_fast":32.0,
            "beta_slow":1.0,"original_max_position_embeddings":4096,"truncate":false},"max_position_embeddings":131072,
            "rms_norm_eps":1e-5,"swiglu_limit":7.0,"eos_token_id":200002,"model_type":"gpt_oss"}"#,
        )
        .unwrap()
    }

    #[test]
    fn yarn_ramp_and_factor_follow_the_design_numbers() {
        let c = gpt_oss_20b().validate().unwrap();
        assert_eq!(c.sliding.len(), 24);
        assert!(c.sliding[0] && !c.sliding[1]);
        let y = c.rope.yarn.as_ref().unwrap();
        assert!((y.attention_factor - 1.3466).abs() < 1e-4);
        let inv = c.rope.inv_freq();
        // Below the ramp (i < 8.09) pure extrapolation, above it (i > 17.40) pure interpolation.
        assert!((inv[0] - 1.0).abs() < 1e-7);
        let p20 = 150000f64.powf(40.0 / 64.0);
        assert!(((inv[20] as f64) - 1.0 / (32.0 * p20)).abs() / (1.0 / (32.0 * p20)) < 1e-5);
    }

    #[test]
    fn bad_values_get_clear_errors() {
        let mut c = gpt_oss_20b();
        c.num_key_value_heads = Some(7);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("num_key_value_heads")
        );
        let mut c = gpt_oss_20b();
        c.hidden_size = Some(100);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("multiples of 32")
        );
        let mut c = gpt_oss_20b();
        c.layer_types = Some(vec!["full_attention".into()]);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("layer_types")
        );
        let mut c = gpt_oss_20b();
        c.vocab_size = None;
        assert!(c.validate().unwrap_err().to_string().contains("vocab_size"));
        // Values that would only make NaNs or zeros.
        for (field, set) in [
            (
                "rope_theta",
                (|c: &mut HfConfig| c.rope_theta = Some(0.0)) as fn(&mut HfConfig),
            ),
            ("rope_theta", |c| c.rope_theta = Some(-1.0)),
            ("rope_theta above 1", |c| c.rope_theta = Some(1.0)),
            ("rms_norm_eps", |c| c.rms_norm_eps = Some(1e300)),
            ("rms_norm_eps", |c| c.rms_norm_eps = Some(0.0)),
            ("swiglu_limit", |c| c.swiglu_limit = Some(-1.0)),
            ("beta_fast", |c| {
                c.rope_scaling.as_mut().unwrap().beta_fast = Some(0.0)
            }),
            ("beta_slow", |c| {
                c.rope_scaling.as_mut().unwrap().beta_slow = Some(-1.0)
            }),
        ] {
            let mut c = gpt_oss_20b();
            set(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        assert!(HfConfig::from_json("{").is_err());
        // A value of the wrong type names its field, nested ones included.
        for (json, field) in [
            (
                r#"{"num_hidden_layers": "24"}"#,
                "num_hidden_layers: invalid type",
            ),
            (
                r#"{"eos_token_id": "x"}"#,
                "eos_token_id: expected a token id",
            ),
            (
                r#"{"rope_scaling": {"factor": "32"}}"#,
                "rope_scaling.factor: invalid type",
            ),
        ] {
            let e = HfConfig::from_json(json).unwrap_err().to_string();
            assert!(e.contains(field), "{json}: {e}");
        }
    }
}
