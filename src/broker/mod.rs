//! The broker seam: where published events get their ids and reach every shard. Cluster mode
//! talks to Redis through [`redis`].

pub mod redis;
