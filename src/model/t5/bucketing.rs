//! T5's relative positions: the bucket id of every (query, key) pair, as transformers'
//! `T5Attention._relative_position_bucket` computes it. The attention kernels take the ids
//! (and the table of biases per bucket) and know nothing of the scheme.

/// Bucket ids [q_len * k_len] of query positions `first_query..first_query + q_len` against
/// keys `0..k_len`, row i from (j - (first_query + i)), exactly as transformers computes them
/// (in f32, like PyTorch). A whole sequence is `first_query = 0`; incremental decoding is
/// `first_query = k_len - 1, q_len = 1`.
pub fn relative_position_buckets(
    first_query: usize,
    q_len: usize,
    k_len: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<u32> {
    let mut buckets = Vec::with_capacity(q_len * k_len);
    for i in 0..q_len {
        let query = (first_query + i) as i64;
        buckets.extend(
            (0..k_len).map(|j| relative_position_bucket(j as i64 - query, bidirectional, num_buckets, max_distance)),
        );
    }
    buckets
}

/// One bucket of transformers' `T5Attention._relative_position_bucket`.
fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0;
    let distance = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = num_buckets / 2;
    bucket += if distance < max_exact {
        distance
    } else {
        // PyTorch: float32 tensor ops with the Python-double divisor rounded to f32; .long() truncates.
        let log_ratio = (distance as f32 / max_exact as f32).ln();
        let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
        let large = max_exact + (log_ratio / log_range * (num_buckets - max_exact) as f32) as i64;
        large.min(num_buckets - 1)
    };
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent f64 transcription of transformers' `_relative_position_bucket`.
    fn bucket_f64(relative_position: i64, bidirectional: bool, num_buckets: i64, max_distance: i64) -> u32 {
        let (n, offset, distance) = if bidirectional {
            (num_buckets / 2, if relative_position > 0 { num_buckets / 2 } else { 0 }, relative_position.abs())
        } else {
            (num_buckets, 0, (-relative_position).max(0))
        };
        let exact = n / 2;
        let bucket = if distance < exact {
            distance
        } else {
            let log_fraction = (distance as f64 / exact as f64).ln() / (max_distance as f64 / exact as f64).ln();
            (exact + (log_fraction * (n - exact) as f64).floor() as i64).min(n - 1)
        };
        (offset + bucket) as u32
    }

    #[test]
    fn relative_position_buckets_match_the_transformers_fixture() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/t5_v1_0/reference.json"))
                .unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let table = &json["relative_position_bucket"];
        let config = &json["config"];
        let num_buckets = config["relative_attention_num_buckets"].as_u64().unwrap() as usize;
        let max_distance = config["relative_attention_max_distance"].as_u64().unwrap() as usize;
        let positions: Vec<i64> =
            table["relative_positions"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!((num_buckets, max_distance, positions.len()), (8, 20, 61));
        let first = -positions[0];
        // One query at position `first` against keys 0..61 gives relative positions -30..30.
        for (key, bidirectional) in [("bidirectional", true), ("unidirectional", false)] {
            let want: Vec<u32> = table[key].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let got =
                relative_position_buckets(first as usize, 1, positions.len(), bidirectional, num_buckets, max_distance);
            assert_eq!(got, want, "{key}");
        }
    }

    #[test]
    fn relative_position_buckets_match_an_f64_transcription() {
        for bidirectional in [true, false] {
            let (q_len, k_len) = (300, 257);
            let got = relative_position_buckets(0, q_len, k_len, bidirectional, 32, 128);
            for i in 0..q_len {
                for j in 0..k_len {
                    let want = bucket_f64(j as i64 - i as i64, bidirectional, 32, 128);
                    assert_eq!(got[i * k_len + j], want, "i={i} j={j} bidirectional={bidirectional}");
                }
            }
            assert_eq!(got.iter().max(), Some(&31), "far positions saturate in the last bucket");
        }
    }
}
