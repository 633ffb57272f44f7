//! GGML tensor types and their dequantisation to f32, block by block, following the reference
//! (scalar) rules of llama.cpp's `ggml-quants.c`. Every quantised type packs a fixed number of
//! values (32 or 256) into a fixed number of bytes with one or more f16 scales.

use anyhow::{bail, Result};
use half::f16;

/// The storage types sculpt can import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
}

const SUPPORTED: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

/// ggml's names of the types sculpt does not import, for the error message.
fn unsupported_name(id: u32) -> Option<&'static str> {
    Some(match id {
        9 => "Q8_1",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

impl TensorType {
    /// The type of ggml id `id` (the `ggml_type` enum).
    pub fn from_id(id: u32) -> Result<TensorType> {
        Ok(match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            30 => TensorType::BF16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            6 => TensorType::Q5_0,
            7 => TensorType::Q5_1,
            8 => TensorType::Q8_0,
            10 => TensorType::Q2K,
            11 => TensorType::Q3K,
            12 => TensorType::Q4K,
            13 => TensorType::Q5K,
            14 => TensorType::Q6K,
            15 => TensorType::Q8K,
            _ => match unsupported_name(id) {
                Some(name) => {
                    bail!("ggml type {name} ({id}) is not supported by sculpt import; supported: {SUPPORTED}")
                }
                None => bail!("ggml type {id} is unknown; supported: {SUPPORTED}"),
            },
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::BF16 => "BF16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q5_0 => "Q5_0",
            TensorType::Q5_1 => "Q5_1",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q2K => "Q2_K",
            TensorType::Q3K => "Q3_K",
            TensorType::Q4K => "Q4_K",
            TensorType::Q5K => "Q5_K",
            TensorType::Q6K => "Q6_K",
            TensorType::Q8K => "Q8_K",
        }
    }

    /// (values per block, bytes per block).
    fn block(self) -> (u64, u64) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::BF16 => (1, 2),
            TensorType::Q4_0 => (32, 2 + 16),
            TensorType::Q4_1 => (32, 2 + 2 + 16),
            TensorType::Q5_0 => (32, 2 + 4 + 16),
            TensorType::Q5_1 => (32, 2 + 2 + 4 + 16),
            TensorType::Q8_0 => (32, 2 + 32),
            TensorType::Q2K => (256, 16 + 64 + 2 + 2),
            TensorType::Q3K => (256, 32 + 64 + 12 + 2),
            TensorType::Q4K => (256, 2 + 2 + 12 + 128),
            TensorType::Q5K => (256, 2 + 2 + 12 + 32 + 128),
            TensorType::Q6K => (256, 128 + 64 + 16 + 2),
            TensorType::Q8K => (256, 4 + 256 + 2 * 16),
        }
    }

    /// Bytes taken by `elements` values; they must fill whole blocks.
    pub fn byte_len(self, elements: u64) -> Result<u64> {
        let (values, bytes) = self.block();
        if !elements.is_multiple_of(values) {
            bail!("{elements} values of type {} do not fill whole blocks of {values}", self.name());
        }
        Ok(elements / values * bytes)
    }

    /// The f32 values of `bytes`, which hold whole blocks of this type.
    pub fn dequantize(self, bytes: &[u8]) -> Result<Vec<f32>> {
        let (values, block_bytes) = self.block();
        let (values, block_bytes) = (values as usize, block_bytes as usize);
        if !bytes.len().is_multiple_of(block_bytes) {
            bail!("{} bytes are not whole {} blocks of {block_bytes} bytes", bytes.len(), self.name());
        }
        let mut out = Vec::with_capacity(bytes.len() / block_bytes * values);
        let blocks = bytes.chunks_exact(block_bytes);
        match self {
            TensorType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
            TensorType::F16 => out.extend(blocks.map(|b| f16::from_le_bytes(b.try_into().unwrap()).to_f32())),
            TensorType::BF16 => out.extend(blocks.map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32())),
            TensorType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
            TensorType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
            TensorType::Q5_0 => blocks.for_each(|b| q5_0(b, &mut out)),
            TensorType::Q5_1 => blocks.for_each(|b| q5_1(b, &mut out)),
            TensorType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
            TensorType::Q2K => blocks.for_each(|b| q2_k(b, &mut out)),
            TensorType::Q3K => blocks.for_each(|b| q3_k(b, &mut out)),
            TensorType::Q4K => blocks.for_each(|b| q4_k(b, &mut out)),
            TensorType::Q5K => blocks.for_each(|b| q5_k(b, &mut out)),
            TensorType::Q6K => blocks.for_each(|b| q6_k(b, &mut out)),
            TensorType::Q8K => blocks.for_each(|b| q8_k(b, &mut out)),
        }
        Ok(out)
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// 32 values: scale d, then 16 bytes of 4-bit quants (low nibbles are values 0..16, high
/// nibbles values 16..32), each value (q - 8) * d.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|q| ((q & 0xF) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// As Q4_0 with a minimum m instead of the offset 8: q * d + m.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|q| (q & 0xF) as f32 * d + m));
    out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
}

/// The fifth bits of a 5-bit block: bit j of the u32 `qh` belongs to value j.
fn fifth_bits(qh: &[u8], j: usize) -> (u8, u8) {
    let qh = u32::from_le_bytes(qh.try_into().unwrap());
    ((((qh >> j) << 4) & 0x10) as u8, ((qh >> (j + 12)) & 0x10) as u8)
}

/// 32 values: d, 4 bytes of fifth bits, 16 bytes of nibbles; (q - 16) * d.
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    let (qh, qs) = (&b[2..6], &b[6..22]);
    let mut high = [0f32; 16];
    for j in 0..16 {
        let (h0, h1) = fifth_bits(qh, j);
        out.push((((qs[j] & 0xF) | h0) as i32 - 16) as f32 * d);
        high[j] = (((qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
    }
    out.extend(high);
}

/// 32 values: d, m, 4 bytes of fifth bits, 16 bytes of nibbles; q * d + m.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let (qh, qs) = (&b[4..8], &b[8..24]);
    let mut high = [0f32; 16];
    for j in 0..16 {
        let (h0, h1) = fifth_bits(qh, j);
        out.push(((qs[j] & 0xF) | h0) as f32 * d + m);
        high[j] = ((qs[j] >> 4) | h1) as f32 * d + m;
    }
    out.extend(high);
}

/// 32 values: d, 32 signed bytes; q * d.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

/// 256 values in 16 sub-blocks of 16: 16 bytes of 4-bit scales (low nibble) and minimums
/// (high nibble), 64 bytes of 2-bit quants, d, dmin; value = d * scale * q - dmin * min. Each
/// half of 128 values takes 32 quant bytes, whose four 2-bit fields (low bits first) are four
/// runs of 32 values, each run two sub-blocks.
fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half_at(b, 80), half_at(b, 82));
    let mut sub_block = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for part in q.chunks_exact(16) {
                let sc = scales[sub_block];
                let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                out.extend(part.iter().map(|v| dl * ((v >> shift) & 3) as f32 - ml));
                sub_block += 1;
            }
        }
    }
}

/// 256 values in 16 sub-blocks of 16: 32 bytes of high bits, 64 bytes of 2-bit low parts,
/// 12 bytes of 6-bit scales, d; value = d * (scale - 32) * (q - 4 when its high bit is clear).
/// The quant runs are laid out as in Q2_K; bit r of high-bit byte l belongs to run r.
fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = half_at(b, 108);
    // 16 scales of 6 bits: low 4 bits in the nibbles of bytes 0..8, high 2 bits in bytes 8..12.
    let scale = |i: usize| {
        let low = if i < 8 { packed[i] & 0xF } else { packed[i - 8] >> 4 };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i32 - 32
    };
    let mut sub_block = 0;
    let mut run = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for (half, part) in q.chunks_exact(16).enumerate() {
                let dl = d * scale(sub_block) as f32;
                let high = &hmask[16 * half..16 * half + 16];
                out.extend(part.iter().zip(high).map(|(v, h)| {
                    let q = ((v >> shift) & 3) as i32 - if h & (1 << run) != 0 { 0 } else { 4 };
                    dl * q as f32
                }));
                sub_block += 1;
            }
            run += 1;
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` (of 8) packed into the 12 bytes `q` of a
/// Q4_K/Q5_K block (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (sc as f32, m as f32)
}

/// 256 values in 8 sub-blocks of 32: d, dmin, 12 bytes of 6-bit scales and minimums, 128
/// bytes of nibbles (each 32 bytes hold two sub-blocks: low nibbles, then high nibbles);
/// value = d * scale * q - dmin * min.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        out.extend(q.iter().map(|v| d1 * (v & 0xF) as f32 - min1));
        out.extend(q.iter().map(|v| d2 * (v >> 4) as f32 - min2));
    }
}

/// As Q4_K with a fifth bit per value: 32 bytes `qh`, where bit 2c of byte l is the fifth bit
/// of value l of sub-block 2c and bit 2c+1 that of sub-block 2c+1.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 1u8 << (2 * chunk + 1));
        let high = |l: usize, bit: u8| if qh[l] & bit != 0 { 16.0 } else { 0.0 };
        out.extend(q.iter().enumerate().map(|(l, v)| d1 * ((v & 0xF) as f32 + high(l, u1)) - min1));
        out.extend(q.iter().enumerate().map(|(l, v)| d2 * ((v >> 4) as f32 + high(l, u2)) - min2));
    }
}

/// 256 values in 16 sub-blocks of 16: 128 bytes of low nibbles, 64 bytes of 2-bit high parts,
/// 16 signed 8-bit scales, then d; value = d * scale * (q - 32). Each half of 128 values
/// takes 64 low-nibble bytes, 32 high bytes and 8 scales.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let mut values = [0f32; 128];
        for l in 0..32 {
            let s = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let scale = |i: usize| d * (sc[i] as i8) as f32;
            values[l] = scale(s) * q1 as f32;
            values[l + 32] = scale(s + 2) * q2 as f32;
            values[l + 64] = scale(s + 4) * q3 as f32;
            values[l + 96] = scale(s + 6) * q4 as f32;
        }
        out.extend(values);
    }
}

/// 256 values: an f32 scale d, 256 signed bytes, then 16 block sums (unused here); q * d.
fn q8_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes(b[0..4].try_into().unwrap());
    out.extend(b[4..260].iter().map(|&q| q as i8 as f32 * d));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each type's fixture blocks (tests/fixtures/gguf/dequant.safetensors, made by
    /// tools/make_gguf_fixtures.py with the `gguf` package) dequantise to its reference values.
    #[test]
    fn every_type_matches_the_gguf_package() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf/dequant.safetensors");
        let bytes = std::fs::read(path).unwrap();
        let fixtures = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let types = [
            TensorType::F16,
            TensorType::BF16,
            TensorType::Q4_0,
            TensorType::Q4_1,
            TensorType::Q5_0,
            TensorType::Q5_1,
            TensorType::Q8_0,
            TensorType::Q2K,
            TensorType::Q3K,
            TensorType::Q4K,
            TensorType::Q5K,
            TensorType::Q6K,
            TensorType::Q8K,
        ];
        for kind in types {
            let blocks = fixtures.tensor(&format!("{}.blocks", kind.name())).unwrap();
            let expected: Vec<f32> =
                bytemuck::pod_collect_to_vec(fixtures.tensor(&format!("{}.values", kind.name())).unwrap().data());
            let got = kind.dequantize(blocks.data()).unwrap();
            assert_eq!(got.len(), expected.len(), "{}", kind.name());
            assert_eq!(kind.byte_len(got.len() as u64).unwrap(), blocks.data().len() as u64, "{}", kind.name());
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!((g - e).abs() <= 1e-6 * e.abs().max(1.0), "{} value {i}: {g} vs {e}", kind.name());
            }
        }
    }

    #[test]
    fn partial_blocks_and_unknown_types_are_refused() {
        let err = TensorType::Q4_0.byte_len(48).unwrap_err().to_string();
        assert!(err.contains("48 values of type Q4_0") && err.contains("blocks of 32"), "{err}");
        let err = TensorType::Q6K.dequantize(&[0u8; 100]).unwrap_err().to_string();
        assert!(err.contains("Q6_K") && err.contains("210"), "{err}");
        let err = TensorType::from_id(20).unwrap_err().to_string();
        assert!(err.contains("IQ4_NL (20) is not supported") && err.contains("Q4_K"), "{err}");
        let err = TensorType::from_id(99).unwrap_err().to_string();
        assert!(err.contains("ggml type 99 is unknown"), "{err}");
    }
}
