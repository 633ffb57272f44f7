//! The GGUF container (versions 2 and 3): header, metadata key/values, tensor infos and the
//! aligned tensor data section. Tensor bytes are read on demand with a seek, so a file is never
//! held in memory whole. Layout: llama.cpp's `gguf.c` and the GGUF spec in ggml's docs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::dequant::TensorType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Floats as f64. An f32 is taken through its shortest decimal form, so that 1e-5 stored
    /// as f32 reads back as 1e-5 rather than 9.999999747378752e-06.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => v.to_string().parse().ok(),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The GGUF type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// Where one tensor lies in the data section and how it is stored.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: innermost (contiguous) dimension first.
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The row-major shape (outermost first), as safetensors and PyTorch write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: its metadata and tensor directory, with the file kept open for reads.
pub struct GgufFile {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
    file_len: u64,
    file: File,
}

impl GgufFile {
    /// Reads the header, metadata and tensor infos of `path` and checks that every tensor
    /// lies inside the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let file_len = file.metadata().with_context(|| format!("{}: cannot stat", path.display()))?.len();
        let mut reader = Reader { inner: BufReader::new(&file), pos: 0, len: file_len };
        let (metadata, tensors, data_start) =
            read_directory(&mut reader).with_context(|| format!("{}: not a readable GGUF file", path.display()))?;
        let gguf = GgufFile { path: path.to_path_buf(), metadata, tensors, data_start, file_len, file };
        for info in &gguf.tensors {
            let end = gguf.data_start + info.offset + info.kind.byte_len(info.elements())?;
            if end > file_len {
                bail!(
                    "{}: tensor {:?} ends at byte {end} but the file has {file_len} bytes (truncated file?)",
                    path.display(),
                    info.name
                );
            }
        }
        Ok(gguf)
    }

    /// The value of `key`, or an error naming the file and the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).with_context(|| format!("{}: metadata key {key:?} is missing", self.path.display()))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw stored bytes of a tensor.
    pub fn read_bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let len = info.kind.byte_len(info.elements())?;
        let start = self.data_start + info.offset;
        debug_assert!(start + len <= self.file_len, "checked in open()");
        let mut bytes = vec![0u8; len as usize];
        let mut file = &self.file;
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut bytes))
            .with_context(|| format!("{}: cannot read the data of tensor {:?}", self.path.display(), info.name))?;
        Ok(bytes)
    }
}

/// A bounded little-endian reader that knows how much of the file is left, so a corrupt
/// length is reported instead of allocating gigabytes.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.len - self.pos {
            bail!("{what} needs {n} bytes at offset {} but the file ends at {} (truncated file?)", self.pos, self.len);
        }
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).with_context(|| format!("reading {what} at offset {}", self.pos))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.bytes(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes).with_context(|| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, kind: u32, what: &str) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => bail!("{what}: bool byte is {other}, not 0 or 1"),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                let item_kind = self.u32(what)?;
                let count = self.u64(what)?;
                // Every item takes at least one byte: a larger count cannot be real.
                if count > self.len - self.pos {
                    bail!("{what}: array of {count} items does not fit in the rest of the file");
                }
                let items = (0..count).map(|_| self.value(item_kind, what)).collect::<Result<Vec<_>>>()?;
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => bail!("{what}: unknown value type {other}"),
        })
    }
}

type Directory = (BTreeMap<String, Value>, Vec<TensorInfo>, u64);

fn read_directory<R: Read>(r: &mut Reader<R>) -> Result<Directory> {
    let magic = r.array::<4>("the magic")?;
    if &magic != MAGIC {
        bail!("bad magic {magic:02x?} (a GGUF file starts with \"GGUF\")");
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        bail!("GGUF version {version} is not supported (2 and 3 are)");
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string(&format!("metadata key #{i}"))?;
        let what = format!("metadata key {key:?}");
        let kind = r.u32(&what)?;
        let value = r.value(kind, &what)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::new();
    for i in 0..tensor_count {
        let name = r.string(&format!("the name of tensor #{i}"))?;
        let what = format!("tensor {name:?}");
        let n_dims = r.u32(&what)?;
        if n_dims > 4 {
            bail!("{what} has {n_dims} dimensions (GGML allows at most 4)");
        }
        let dims = (0..n_dims).map(|_| r.u64(&what)).collect::<Result<Vec<_>>>()?;
        let kind_id = r.u32(&what)?;
        let kind = TensorType::from_id(kind_id).with_context(|| format!("{what}: tensor type"))?;
        let offset = r.u64(&what)?;
        if dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none() {
            bail!("{what}: dimensions {dims:?} overflow");
        }
        if tensors.iter().any(|t: &TensorInfo| t.name == name) {
            bail!("{what} is listed twice");
        }
        tensors.push(TensorInfo { name, dims, kind, offset });
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => bail!("metadata key \"general.alignment\" is {v:?}; a power of two is needed"),
        },
    };
    let data_start = r.pos.div_ceil(alignment) * alignment;
    Ok((metadata, tensors, data_start))
}
