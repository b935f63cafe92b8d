//! The workers that send the parts of one multipart upload. The channel is a rendezvous, so a
//! full pool blocks the writer: memory stays within one part per worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Kind};
use crate::store::s3::client::Client;
use crate::store::s3::errors::Target;

pub struct Pool {
    sender: Option<SyncSender<(u32, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// What the workers report back.
struct Shared {
    /// The ETag of part n at index n - 1.
    etags: Mutex<Vec<Option<String>>>,
    error: Mutex<Option<Error>>,
    failed: AtomicBool,
}

impl Pool {
    /// Up to `concurrency` workers uploading parts of `upload_id`. A thread that cannot be
    /// started fails the pool (see `failed`) and no more are tried; the ones running carry on.
    pub fn start(
        client: &Arc<Client>,
        key: &str,
        upload_id: &str,
        target: &Target,
        concurrency: u32,
    ) -> Pool {
        let shared = Arc::new(Shared {
            etags: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            failed: AtomicBool::new(false),
        });
        let (sender, receiver) = sync_channel::<(u32, Vec<u8>)>(0);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let client = Arc::clone(client);
            let worker_shared = Arc::clone(&shared);
            let receiver = Arc::clone(&receiver);
            let key = key.to_string();
            let upload_id = upload_id.to_string();
            let target = target.clone();
            let spawned = std::thread::Builder::new()
                .name("s3-upload-part".into())
                .spawn(move || loop {
                    let shared = &worker_shared;
                    let next = match receiver.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((number, body)) = next else { return };
                    if shared.failed.load(Ordering::SeqCst) {
                        continue; // drain: the upload is being abandoned
                    }
                    match client.upload_part(&key, &upload_id, number, &body, &target) {
                        Ok(etag) => {
                            if let Ok(mut etags) = shared.etags.lock() {
                                let index = (number - 1) as usize;
                                if etags.len() <= index {
                                    etags.resize(index + 1, None);
                                }
                                etags[index] = Some(etag);
                            }
                        }
                        Err(e) => shared.fail(e),
                    }
                });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    shared.fail(crate::threads::error(e));
                    break;
                }
            }
        }
        Pool {
            sender: Some(sender),
            workers,
            shared,
        }
    }

    /// No worker could be started.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Hands part `number` to a worker, blocking while all are busy; false once closed.
    pub fn send(&self, number: u32, part: Vec<u8>) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|s| s.send((number, part)).is_ok())
    }

    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Records the first error; workers skip the parts still queued.
    pub fn fail(&self, err: Error) {
        self.shared.fail(err);
    }

    /// Closes the channel and waits for the workers to finish the parts they were given.
    pub fn finish(&mut self) {
        self.sender = None; // workers finish the queued parts, then see the channel closed
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }

    /// `finish`, skipping the parts still queued. Idempotent.
    pub fn stop(&mut self) {
        self.shared.failed.store(true, Ordering::SeqCst);
        self.finish();
    }

    /// The ETags of the parts sent, in order (after `finish`); a part that went missing is
    /// missing here too.
    pub fn etags(&self) -> Vec<String> {
        match self.shared.etags.lock() {
            Ok(etags) => etags.iter().flatten().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The error that failed the pool.
    pub fn take_error(&self) -> Error {
        self.shared
            .error
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .unwrap_or_else(|| Error::new(Kind::Remote, "a part upload failed"))
    }
}

impl Shared {
    fn fail(&self, err: Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(err);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
}
