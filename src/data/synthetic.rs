//! The built-in task stream, generated from a seed with no files: four tasks over one
//! shared vocabulary of symbols that interfere when learned in sequence (the same inputs
//! need different outputs), each with a held-out evaluation set. Every answer is one word,
//! so a small model learns each task in a few hundred steps.

use super::jsonl::Example;
use super::stream::{Task, TaskSettings};
use crate::rng::Rng;

/// The symbols every task draws from.
pub const SYMBOLS: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
/// Label words of the classification task.
pub const LABELS: &[&str] = &["low", "high"];
/// Label words of the colour task, one per run of three symbols (a-c, d-f, g-i, j-l).
pub const COLOURS: &[&str] = &["red", "green", "blue", "gold"];
/// Task prefixes, in stream order.
pub const TASKS: &[&str] = &["max", "min", "classify", "colour"];

/// A word-level `tokenizer.json` over [`vocabulary`] with T5's conventions (pad 0, </s> 1,
/// unk 2, </s> appended), loadable by the tokenizers crate and by transformers.
pub fn tokenizer_json() -> String {
    word_tokenizer_json(&vocabulary())
}

/// A word-level `tokenizer.json` over `words` (ids from 3, after pad, </s> and unk).
pub fn word_tokenizer_json(words: &[String]) -> String {
    let specials = ["<pad>", "</s>", "<unk>"];
    let words: Vec<String> = specials.iter().map(|s| s.to_string()).chain(words.iter().cloned()).collect();
    let vocab: serde_json::Map<String, serde_json::Value> =
        words.iter().enumerate().map(|(i, w)| (w.clone(), serde_json::json!(i))).collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        })
        .collect();
    let eos = serde_json::json!({"SpecialToken": {"id": "</s>", "type_id": 0}});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, eos],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, eos, {"Sequence": {"id": "B", "type_id": 0}}, eos],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// Every word the synthetic tasks use, for building a word-level tokenizer.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = TASKS.iter().map(|t| format!("{t}:")).collect();
    words.extend(SYMBOLS.iter().chain(LABELS).chain(COLOURS).map(|s| s.to_string()));
    words
}

fn answer(task: &str, symbols: &[usize]) -> String {
    let (max, min) = (*symbols.iter().max().expect("non-empty"), *symbols.iter().min().expect("non-empty"));
    match task {
        "max" => SYMBOLS[max].to_string(),
        "min" => SYMBOLS[min].to_string(),
        // the colour of the smallest symbol
        "colour" => COLOURS[min * COLOURS.len() / SYMBOLS.len()].to_string(),
        // "high" when most symbols come from the upper half of the alphabet.
        _ => {
            let high = symbols.iter().filter(|&&i| i >= SYMBOLS.len() / 2).count();
            LABELS[(2 * high > symbols.len()) as usize].to_string()
        }
    }
}

/// `n_train` + `n_eval` distinct examples per task, 3 to 5 symbols each, from `seed`.
/// Evaluation inputs never occur in the training set of the same task.
pub fn stream(seed: u64, n_train: usize, n_eval: usize) -> Vec<Task> {
    let mut rng = Rng::new(seed);
    TASKS
        .iter()
        .map(|&task| {
            let mut seen = std::collections::HashSet::new();
            let mut examples = Vec::new();
            while examples.len() < n_train + n_eval {
                let len = 3 + rng.below(3);
                // odd lengths keep the classification free of ties
                let len = if task == "classify" && len.is_multiple_of(2) { len + 1 } else { len };
                let symbols: Vec<usize> = (0..len).map(|_| rng.below(SYMBOLS.len())).collect();
                if seen.insert(symbols.clone()) {
                    let body = symbols.iter().map(|&i| SYMBOLS[i]).collect::<Vec<_>>().join(" ");
                    examples.push(Example { input: format!("{task}: {body}"), target: answer(task, &symbols) });
                }
            }
            let eval = examples.split_off(n_train);
            Task { name: task.to_string(), train: examples, eval, labels: None, settings: TaskSettings::default() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_give_the_expected_answers() {
        assert_eq!(answer("max", &[2, 0, 5]), "f");
        assert_eq!(answer("min", &[2, 7, 5]), "c");
        assert_eq!(answer("colour", &[6, 7, 11]), "blue");
        assert_eq!(answer("colour", &[3, 5]), "green");
        assert_eq!(answer("classify", &[0, 1, 11]), "low");
        assert_eq!(answer("classify", &[10, 1, 11]), "high");
    }

    #[test]
    fn tokenizer_round_trips_every_task() {
        let tok: tokenizers::Tokenizer = tokenizer_json().parse().unwrap();
        let enc = tok.encode("max: c a", true).unwrap();
        let vocab = vocabulary();
        let id = |w: &str| 3 + vocab.iter().position(|v| v == w).unwrap() as u32;
        assert_eq!(enc.get_ids(), &[id("max:"), id("c"), id("a"), 1]);
        for task in stream(1, 5, 2) {
            for e in task.train {
                let ids = tok.encode(e.target.as_str(), true).unwrap().get_ids().to_vec();
                assert!(!ids.contains(&2), "unknown word in {:?}", e.target);
                assert_eq!(tok.decode(&ids, true).unwrap(), e.target);
            }
        }
    }

    #[test]
    fn stream_is_seeded_disjoint_and_in_vocabulary() {
        let a = stream(7, 50, 20);
        let b = stream(7, 50, 20);
        assert_eq!(a.len(), TASKS.len());
        let vocab = vocabulary();
        for (ta, tb) in a.iter().zip(&b) {
            assert_eq!(ta.train, tb.train);
            assert_eq!((ta.train.len(), ta.eval.len()), (50, 20));
            for e in &ta.eval {
                assert!(!ta.train.iter().any(|t| t.input == e.input), "eval input {:?} also in training", e.input);
            }
            for e in ta.train.iter().chain(&ta.eval) {
                for w in e.input.split(' ').chain(e.target.split(' ')) {
                    assert!(vocab.iter().any(|v| v == w), "{w} not in the vocabulary");
                }
            }
        }
        assert_ne!(stream(8, 50, 20)[0].train, a[0].train);
    }
}
