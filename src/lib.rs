//! sculpt: continual full fine-tuning constrained by adaptive SVD (OSFT), on any GPU that
//! speaks Vulkan, Metal or DX12, through wgpu and hand-written WGSL compute shaders.
//!
//! Layers, each using only the ones before it (tests/layering.rs checks): [`io`] (crash-safe
//! files), [`rng`] and [`plot`] (PNG charts) → [`gpu`] (device, pool, recorder) → [`tensor`] →
//! [`kernels`] → [`model`] → [`data`] → [`optim`] → [`subspace`] → [`train`] → [`continual`]
//! (with its checkpoints) → [`cli`].

pub mod cli;
pub mod continual;
pub mod data;
pub mod gpu;
pub mod io;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod subspace;
pub mod tensor;
pub mod train;

pub use gpu::{Gpu, GpuOptions};
pub use tensor::{DType, Tensor};
