//! WGSL sources, a small preprocessor, and the keys that name each compiled variant.
//!
//! Kernels are specialized by text variants (`#ifdef SUBGROUPS`, `enable f16;`) chosen by
//! `defines`; tuning numbers are WGSL constants in each file. Only `#include "file"` (each file
//! once per shader), `#ifdef NAME`, `#ifndef NAME`, `#else` and `#endif` are understood; a
//! define that the source never tests is an error, so a misspelt flag cannot be ignored silently.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// (path under `shaders/`, text) for a list of WGSL files embedded at build time.
macro_rules! embed_wgsl {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../shaders/", $path)))),*]
    };
}

/// Every WGSL file, by its path under `shaders/`.
const SOURCES: &[(&str, &str)] = embed_wgsl![
    "common/reduce.wgsl",
    "common/step.wgsl",
    "common/bf16.wgsl",
    "common/mxfp4.wgsl",
    "common/f16_pairs.wgsl",
    "common/kv.wgsl",
    "common/kv_table.wgsl",
    "common/rope.wgsl",
    "common/token_tile.wgsl",
    "common/lanes.wgsl",
    "common/row_group.wgsl",
    "common/linear_out.wgsl",
    "common/linear_params.wgsl",
    "common/moe_params.wgsl",
    "common/attention_params.wgsl",
    "common/coop_tile.wgsl",
    "common/simt_tile.wgsl",
    "common/tile_step.wgsl",
    "embed.wgsl",
    "rmsnorm.wgsl",
    "linear.wgsl",
    "linear_vec.wgsl",
    "rope.wgsl",
    "attention.wgsl",
    "attention_split.wgsl",
    "router.wgsl",
    "router_fold.wgsl",
    "moe.wgsl",
    "moe_vec.wgsl",
    "sample.wgsl",
    "f16_probe.wgsl",
    "mxfp4_layout.wgsl",
];

/// Names the kernel files (without `common/`), for the shader validation sweep.
pub fn kernel_files() -> impl Iterator<Item = &'static str> {
    SOURCES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !n.starts_with("common/"))
}

fn lookup(name: &str) -> Result<&'static str> {
    if let Some(text) = overridden(name) {
        return Ok(text);
    }
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| Error::Shader {
            key: name.into(),
            msg: "no such shader file".into(),
        })
}

/// For kernel tuning: with `GPT_OSS_SHADER_DIR` set, a file found there replaces the embedded one
/// (read once per process), so one binary can time several variants of a kernel in one run.
#[cfg(not(target_arch = "wasm32"))]
fn overridden(name: &str) -> Option<&'static str> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static READ: OnceLock<Mutex<HashMap<String, Option<&'static str>>>> = OnceLock::new();
    let dir = std::env::var_os("GPT_OSS_SHADER_DIR")?;
    let mut read = READ.get_or_init(Default::default).lock().ok()?;
    *read.entry(name.to_string()).or_insert_with(|| {
        let text = std::fs::read_to_string(std::path::Path::new(&dir).join(name)).ok()?;
        Some(Box::leak(text.into_boxed_str()))
    })
}

#[cfg(target_arch = "wasm32")]
fn overridden(_: &str) -> Option<&'static str> {
    None
}

/// The value of `const NAME: u32 = <literal>u;` in a shader file, so that a grid size the Rust side
/// needs is written once, in the shader.
pub fn wgsl_const(file: &str, name: &str) -> Result<u32> {
    let text = lookup(file)?;
    let prefix = format!("const {name}: u32 = ");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim_end_matches(';').trim_end_matches('u').parse().ok())
        .ok_or_else(|| Error::Shader {
            key: file.into(),
            msg: format!("no `{prefix}<number>u;` line"),
        })
}

/// One compiled variant: file, entry point, text defines, and whether naga's runtime checks
/// stay in (`Gpu::pipeline`).
#[derive(Clone, Debug, PartialEq)]
pub struct ShaderKey {
    pub file: &'static str,
    pub entry: &'static str,
    pub defines: BTreeSet<&'static str>,
    pub runtime_checks: bool,
}

impl ShaderKey {
    pub fn new(file: &'static str, entry: &'static str) -> Self {
        ShaderKey {
            file,
            entry,
            defines: BTreeSet::new(),
            runtime_checks: true,
        }
    }

    /// When `off`, compiles without naga's index clamps and division guards on native backends,
    /// for a kernel whose every index into its private and workgroup arrays is in range by
    /// construction (loop bounds that are constants, or shapes the host checked) and whose
    /// divisors are constants or counts the host checked are positive. Out of range there would
    /// be undefined behaviour, so a kernel earns this only by review and by a measured gain
    /// (PERF.md v0.55, v0.56).
    pub fn without_runtime_checks_if(mut self, off: bool) -> Self {
        self.runtime_checks &= !off;
        self
    }

    /// Adds a text define when `on`.
    pub fn define_if(mut self, name: &'static str, on: bool) -> Self {
        if on {
            self.defines.insert(name);
        }
        self
    }

    /// A readable unique label such as `linear.coop.COOP.SPLIT_INPUTS.TILES`.
    pub fn label(&self) -> String {
        let mut s = format!("{}.{}", self.file.trim_end_matches(".wgsl"), self.entry);
        for d in &self.defines {
            s.push('.');
            s.push_str(d);
        }
        if self.checks_left_out() {
            s.push_str(".UNCHECKED");
        }
        s
    }

    /// Whether this variant compiles without naga's runtime checks: where the key opts out, except
    /// in the browser, which compiles the WGSL itself with its own checks.
    pub fn checks_left_out(&self) -> bool {
        !self.runtime_checks && !cfg!(target_arch = "wasm32")
    }

    /// The preprocessed WGSL text.
    pub fn source(&self) -> Result<String> {
        let mut ex = Expansion {
            defines: &self.defines,
            tested: BTreeSet::new(),
            included: BTreeSet::new(),
            out: String::new(),
        };
        ex.expand(self.file, 0).map_err(|msg| Error::Shader {
            key: self.label(),
            msg,
        })?;
        if let Some(unused) = self.defines.iter().find(|d| !ex.tested.contains(**d)) {
            return Err(Error::Shader {
                key: self.label(),
                msg: format!("define `{unused}` is never tested by the source"),
            });
        }
        Ok(ex.out)
    }
}

/// One preprocessing run: the defines, the names the source tested, the files already included
/// (each file is included once, so common headers may include what they need), and the text.
struct Expansion<'a> {
    defines: &'a BTreeSet<&'static str>,
    tested: BTreeSet<String>,
    included: BTreeSet<String>,
    out: String,
}

impl Expansion<'_> {
    fn expand(&mut self, file: &str, depth: usize) -> std::result::Result<(), String> {
        if depth > 8 {
            return Err(format!("#include nested too deeply at {file}"));
        }
        if !self.included.insert(file.to_string()) {
            return Ok(());
        }
        let text = lookup(file).map_err(|_| format!("unknown file `{file}`"))?;
        // Each open #if: (this branch active, some branch taken).
        let mut stack: Vec<(bool, bool)> = Vec::new();
        let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(a, _)| *a);
        for (no, line) in text.lines().enumerate() {
            let t = line.trim();
            let at = || format!("{file}:{}", no + 1);
            if let Some(rest) = t
                .strip_prefix("#ifdef ")
                .or_else(|| t.strip_prefix("#ifndef "))
            {
                let name = rest.trim();
                self.tested.insert(name.to_string());
                let is_set = self.defines.contains(name);
                let cond = if t.starts_with("#ifdef") {
                    is_set
                } else {
                    !is_set
                };
                stack.push((cond, cond));
            } else if t == "#else" {
                let top = stack
                    .last_mut()
                    .ok_or_else(|| format!("{}: #else without #if", at()))?;
                top.0 = !top.1;
                top.1 = true;
            } else if t == "#endif" {
                stack
                    .pop()
                    .ok_or_else(|| format!("{}: #endif without #if", at()))?;
            } else if let Some(rest) = t.strip_prefix("#include ") {
                if active(&stack) {
                    self.expand(rest.trim().trim_matches('"'), depth + 1)?;
                }
            } else if t.starts_with('#') {
                return Err(format!("{}: unknown directive `{t}`", at()));
            } else if active(&stack) {
                self.out.push_str(line);
                self.out.push('\n');
            }
        }
        if !stack.is_empty() {
            return Err(format!("{file}: missing #endif"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_define_is_an_error() {
        let key = ShaderKey::new("rmsnorm.wgsl", "main").define_if("NO_SUCH_FLAG", true);
        let err = key.source().unwrap_err().to_string();
        assert!(err.contains("NO_SUCH_FLAG"), "{err}");
    }

    #[test]
    fn a_header_included_twice_is_expanded_once() {
        // linear_vec's NORM variant reaches common/lanes.wgsl through row_group and reduce.
        let src = ShaderKey::new("linear_vec.wgsl", "main")
            .define_if("NORM", true)
            .source()
            .unwrap();
        assert_eq!(src.matches("struct Lanes").count(), 1);
    }

    #[test]
    fn constants_are_read_from_the_shader() {
        assert!(wgsl_const("linear_vec.wgsl", "ROWS").unwrap() >= 1);
        assert!(wgsl_const("linear_vec.wgsl", "NOPE").is_err());
    }

    #[test]
    fn subgroup_variant_differs() {
        let a = ShaderKey::new("linear.wgsl", "main").source().unwrap();
        let b = ShaderKey::new("linear.wgsl", "main")
            .define_if("SUBGROUPS", true)
            .source()
            .unwrap();
        assert!(!a.contains("subgroupAdd") && b.contains("subgroupAdd"));
    }
}
