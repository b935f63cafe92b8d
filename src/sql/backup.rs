//! backup_to_file(pattern [, options]) and backup_to_s3(bucket, pattern [, options]): one
//! job (`job::backup`), two targets.

use super::{json, options, Call};
use crate::error::Result;
use crate::job;
use crate::request::{self, Target};

pub fn to_file(call: &Call) -> Result<String> {
    call.arity(1, 2, "(pattern [, options])")?;
    let pattern = call.text(0, "pattern")?;
    let mut map = call.options(1)?;
    options::take_s3(&mut map, false)?;
    let req = request::backup(Target::File { pattern }, options::decode(map)?)?;
    let _progress = crate::progress::show(call.name, req.progress);
    json(&job::backup(&call.connection(), req)?)
}

pub fn to_s3(call: &Call) -> Result<String> {
    call.arity(2, 3, "(bucket, pattern [, options])")?;
    let bucket = call.text(0, "bucket")?;
    let pattern = call.text(1, "pattern")?;
    let mut map = call.options(2)?;
    let s3 = options::take_s3(&mut map, true)?;
    let target = Target::S3 {
        bucket,
        pattern,
        s3: Box::new(s3),
    };
    let req = request::backup(target, options::decode(map)?)?;
    let _progress = crate::progress::show(call.name, req.progress);
    json(&job::backup(&call.connection(), req)?)
}
