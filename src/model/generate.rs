//! The greedy decoding loop every family shares; each family supplies one step.

use anyhow::Result;

use super::lm_head::argmax;

/// Greedy continuation: `next_logits` takes the tokens fed since its last call (first
/// `first_input`, then each chosen token) and returns the logits of the next position. Stops
/// after `max_new_tokens` or after (and including) any of the `eos` ids.
pub fn greedy(
    first_input: &[u32],
    max_new_tokens: usize,
    eos: &[u32],
    mut next_logits: impl FnMut(&[u32]) -> Result<Vec<f32>>,
) -> Result<Vec<u32>> {
    let mut input = first_input.to_vec();
    let mut output = Vec::new();
    while output.len() < max_new_tokens {
        let token = argmax(&next_logits(&input)?);
        output.push(token);
        if eos.contains(&token) {
            break;
        }
        input = vec![token];
    }
    Ok(output)
}
