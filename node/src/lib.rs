//! ferry-node: the edge.
//!
//! # Layout
//! - [`track`]: track buffers (sans-IO core in `track::buffer`) and their
//!   producer/consumer handles — per-viewer backpressure lives here.
pub mod track;
