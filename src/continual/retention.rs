//! What the model knew before the stream, measured after every task: the base model's greedy
//! answers to a held-out set of general prompts are recorded before the first task; after
//! each task, the mean per-token loss of those answers under the current model (how much
//! less likely the old behaviour has become) and the share of prompts whose greedy answer is
//! still token for token the same.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::Example;
use crate::io::{read_text, write_atomic};
use crate::model::{Model, Pair, Tokenizer};
use crate::train::{encode_source, forced_loss_and_matches};

/// The prompts, how long an answer may grow, and the run's limits.
#[derive(Clone, Debug, Serialize)]
pub struct RetentionSet {
    /// (run.json records how many.)
    #[serde(serialize_with = "count")]
    pub prompts: Vec<Example>,
    pub max_new_tokens: usize,
    /// Longer prompts are cut as training cuts sources.
    pub max_source_len: usize,
    /// Prompts per batch of the loss.
    pub batch_size: usize,
    /// The starting model's answers, when known before the run (runs from the same weights
    /// share them); otherwise the run generates them before its first task.
    #[serde(skip)]
    pub base: Option<Vec<Vec<u32>>>,
}

/// Retention at one point of the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetentionPoint {
    /// "base" before the first task, then the name of the task just trained.
    pub after: String,
    /// Mean loss per token of the base model's answers.
    pub loss: f64,
    /// Share of prompts answered exactly as the base model answered them, in [0, 1].
    pub identical: f64,
}

fn count<S: serde::Serializer>(prompts: &[Example], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(prompts.len() as u64)
}

impl RetentionSet {
    /// The prompts' token ids, cut as training cuts sources (encoded once per run).
    pub fn sources(&self, tokenizer: &Tokenizer) -> Result<Vec<Vec<u32>>> {
        self.prompts.iter().map(|p| encode_source(tokenizer, p, self.max_source_len)).collect()
    }

    /// The model's greedy answers to `sources` (token ids, with the end token when it stopped
    /// on one).
    pub fn answers(&self, model: &dyn Model, sources: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        sources.iter().map(|s| model.generate(s, self.max_new_tokens)).collect()
    }

    /// Retention of the current model against the base model's answers `base` to `sources`,
    /// in one batched pass under teacher forcing: the loss of the base answers, and which
    /// answers the model would still give (its argmax at every position of the answer is the
    /// base model's token; this is greedy decoding's answer without decoding).
    pub fn measure(
        &self,
        model: &dyn Model,
        sources: &[Vec<u32>],
        base: &[Vec<u32>],
        after: &str,
    ) -> Result<RetentionPoint> {
        // An empty answer has no token to score (and is given again trivially).
        let pairs: Vec<Pair> =
            sources.iter().cloned().zip(base.iter().cloned()).filter(|(_, answer)| !answer.is_empty()).collect();
        let (loss, matches) = forced_loss_and_matches(model, &pairs, self.batch_size)?;
        let same = base.len() - pairs.len() + matches;
        let identical = same as f64 / base.len().max(1) as f64;
        log::info!("retention after {after}: base answers' loss {loss:.4}, identical {:.1}%", 100.0 * identical);
        Ok(RetentionPoint { after: after.to_string(), loss, identical })
    }
}

/// The starting answers of a retention set, saved so that runs from the same weights share
/// them (`--retention-base`). The file names the model and prompts it was made from.
#[derive(Serialize, Deserialize)]
struct BaseAnswers {
    model: std::path::PathBuf,
    prompts: std::path::PathBuf,
    max_new_tokens: usize,
    answers: Vec<Vec<u32>>,
}

/// Writes the starting model's answers to the prompts of `prompts` to `path`.
pub fn write_base_answers(
    path: &Path,
    model: &Path,
    prompts: &Path,
    max_new_tokens: usize,
    answers: &[Vec<u32>],
) -> Result<()> {
    let saved = BaseAnswers {
        model: model.to_path_buf(),
        prompts: prompts.to_path_buf(),
        max_new_tokens,
        answers: answers.to_vec(),
    };
    write_atomic(path, serde_json::to_string(&saved)?.as_bytes())
}

/// The answers saved in `path`, refused unless they answer `count` prompts (those of
/// `prompts`) in at most `max_new_tokens` tokens each.
pub fn read_base_answers(path: &Path, prompts: &Path, count: usize, max_new_tokens: usize) -> Result<Vec<Vec<u32>>> {
    let saved: BaseAnswers = serde_json::from_str(&read_text(path)?).with_context(|| {
        format!("{}: not a file of retention answers (\"model\", \"prompts\", \"max_new_tokens\", \"answers\": lists of token ids)", path.display())
    })?;
    if saved.max_new_tokens != max_new_tokens || saved.answers.len() != count {
        bail!(
            "{}: answers to {} prompts of at most {} tokens, but this run has {count} prompts ({}) and --retention-max-tokens {max_new_tokens}; pass another --retention-base",
            path.display(),
            saved.answers.len(),
            saved.max_new_tokens,
            prompts.display()
        );
    }
    Ok(saved.answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_answers_read_back_only_for_the_same_prompts_and_budget() {
        let dir = std::env::temp_dir().join(format!("sculpt-base-answers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, prompts) = (dir.join("base.json"), Path::new("prompts.jsonl"));
        let answers = vec![vec![5, 6, 2], vec![]];
        write_base_answers(&path, Path::new("model"), prompts, 16, &answers).unwrap();
        assert_eq!(read_base_answers(&path, prompts, 2, 16).unwrap(), answers);
        let refused = read_base_answers(&path, prompts, 3, 16).unwrap_err().to_string();
        assert!(refused.contains("answers to 2 prompts of at most 16 tokens") && refused.contains("3 prompts"));
        assert!(read_base_answers(&path, prompts, 2, 8).unwrap_err().to_string().contains("--retention-max-tokens 8"));
        std::fs::write(&path, "{\"answers\": [[\"a\"]]}").unwrap();
        assert!(format!("{:#}", read_base_answers(&path, prompts, 1, 16).unwrap_err())
            .contains("not a file of retention answers"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
