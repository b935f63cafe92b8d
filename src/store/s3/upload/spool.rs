//! Whole parts waiting on disk for the multipart upload to start (it needs the snapshot's
//! sha256, still being computed), so that compression need not wait for the hash.

use std::collections::VecDeque;
use std::fs::File;
use std::io;

use super::out_of_memory;
use crate::temp::{read_exact_at, write_all_at};

/// Parts waiting on disk, read back in the order they were written. The file has no name
/// (`temp::unnamed`), so nothing is left behind whatever happens.
#[derive(Default)]
pub struct Spool {
    file: Option<File>,
    written: u64,
    read: u64,
    /// Lengths of the parts not yet read back.
    parts: VecDeque<usize>,
}

impl Spool {
    /// Parts held.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn push(&mut self, part: &[u8], dir: &std::path::Path) -> io::Result<()> {
        let file = match self.file.as_mut() {
            Some(file) => file,
            None => self.file.insert(crate::temp::unnamed(dir)?),
        };
        write_all_at(file, part, self.written)?;
        self.written += part.len() as u64;
        self.parts.push_back(part.len());
        Ok(())
    }

    pub fn pop(&mut self) -> io::Result<Option<Vec<u8>>> {
        let (Some(len), Some(file)) = (self.parts.pop_front(), self.file.as_ref()) else {
            return Ok(None);
        };
        let mut part = Vec::new();
        part.try_reserve_exact(len)
            .map_err(|_| out_of_memory(len).into_io())?;
        part.resize(len, 0);
        read_exact_at(file, &mut part, self.read)?;
        self.read += len as u64;
        if self.parts.is_empty() {
            *self = Spool::default(); // frees the disk space at once
        }
        Ok(Some(part))
    }
}
