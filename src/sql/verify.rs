//! verify_backup(location [, options]).

use super::{json, options, Call};
use crate::error::Result;
use crate::job;
use crate::request;
use crate::store::Location;

pub fn verify(call: &Call) -> Result<String> {
    call.arity(1, 2, "(location [, options])")?;
    let location = call.text(0, "location")?;
    let mut map = call.options(1)?;
    let s3 = options::take_s3(&mut map, Location::parse(&location)?.is_s3())?;
    let req = request::verify(location, s3, options::decode(map)?)?;
    let _progress = crate::progress::show(call.name, req.progress);
    json(&job::verify(&call.connection(), &req)?)
}
