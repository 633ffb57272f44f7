//! Which weight matrices carry a frozen subspace, chosen by name pattern (each family's
//! default patterns are in [`crate::model::targets`]).

/// Glob match where `*` stands for any (possibly empty) substring and `?` for one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, si));
            pi += 1;
        } else if let Some((bp, bs)) = backtrack {
            pi = bp + 1;
            si = bs + 1;
            backtrack = Some((bp, bs + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// True when `name` matches any of `patterns`.
pub fn is_target(patterns: &[impl AsRef<str>], name: &str) -> bool {
    patterns.iter().any(|p| glob_match(p.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::targets::{T5_CROSS_ATTENTION, T5_DEFAULT};

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
            assert!(is_target(T5_DEFAULT, n), "{n}");
        }
        for n in no {
            assert!(!is_target(T5_DEFAULT, n), "{n}");
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
    }
}
