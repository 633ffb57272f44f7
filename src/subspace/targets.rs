//! Which weight matrices carry a frozen subspace, chosen by name pattern (each family's
//! default patterns are in its folder under model/: `t5::TARGETS`, `decoder::TARGETS`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use globset::{GlobBuilder, GlobMatcher};

/// The compiled matcher of `pattern` (None for a pattern globset refuses, warned about once),
/// built once per pattern: the optimizer asks about every parameter at every step.
fn matcher(pattern: &str) -> Option<GlobMatcher> {
    static MATCHERS: OnceLock<Mutex<HashMap<String, Option<GlobMatcher>>>> = OnceLock::new();
    let mut matchers = MATCHERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let compiled = matchers.entry(pattern.to_string()).or_insert_with(|| {
        // `*` crosses the dots of parameter names: no path separators here.
        match GlobBuilder::new(pattern).literal_separator(false).build() {
            Ok(glob) => Some(glob.compile_matcher()),
            Err(e) => {
                log::warn!("target pattern {pattern:?} matches nothing: {e}");
                None
            }
        }
    });
    compiled.clone()
}

/// Glob match where `*` stands for any (possibly empty) substring, dots included, and `?` for
/// one character (globset's syntax: `[...]` and `{a,b}` too).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    matcher(pattern).is_some_and(|m| m.is_match(name))
}

/// True when `name` matches any of `patterns`.
pub fn is_target(patterns: &[impl AsRef<str>], name: &str) -> bool {
    patterns.iter().any(|p| glob_match(p.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::t5::{CROSS_ATTENTION_TARGETS as T5_CROSS_ATTENTION, TARGETS as T5_TARGETS};

    #[test]
    fn default_patterns_pick_self_attention_and_feed_forward_only() {
        let yes = [
            "encoder.block.0.layer.0.SelfAttention.q.weight",
            "decoder.block.2.layer.0.SelfAttention.o.weight",
            "encoder.block.1.layer.1.DenseReluDense.wi.weight",
            "decoder.block.0.layer.2.DenseReluDense.wi_1.weight",
        ];
        let no = [
            "shared.weight",
            "lm_head.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "decoder.block.0.layer.1.EncDecAttention.q.weight",
            "encoder.block.0.layer.0.layer_norm.weight",
        ];
        for n in yes {
            assert!(is_target(T5_TARGETS, n), "{n}");
        }
        for n in no {
            assert!(!is_target(T5_TARGETS, n), "{n}");
        }
        assert!(is_target(T5_CROSS_ATTENTION, "decoder.block.0.layer.1.EncDecAttention.q.weight"));
    }

    #[test]
    fn glob_handles_stars_and_question_marks() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("wi_?", "wi_0"));
        assert!(!glob_match("wi_?", "wi"));
        assert!(glob_match("*.q.weight", "x.q.weight"));
        assert!(!glob_match("*.q.weight", "x.qq.weight"));
        assert!(glob_match("model.layers.*.mlp.up_proj.weight", "model.layers.11.mlp.up_proj.weight"));
        assert!(glob_match("*", "encoder.block.0.layer.0.SelfAttention.q.weight"), "`*` crosses dots");
        assert!(!glob_match("[", "["), "a pattern globset refuses matches nothing");
    }
}
