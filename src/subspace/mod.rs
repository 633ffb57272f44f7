//! The method: frozen singular subspaces of the target matrices, how many directions each
//! keeps, and the projection of every update out of them.

pub mod importance;
pub mod project;
pub mod rank;
pub mod set;
pub mod state;
pub mod targets;

pub use project::{project, Basis, FrozenSubspace, Mode};
pub use rank::RankPolicy;
pub use set::SubspaceSet;
