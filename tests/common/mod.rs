//! Helpers shared by integration tests. Each test file includes this with `mod common;` and
//! uses what it needs.
#![allow(dead_code)]

pub mod proxy;
pub mod s3server;
