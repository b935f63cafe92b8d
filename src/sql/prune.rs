//! backup_prune(location, policy).

use super::{json, options, Call};
use crate::error::Result;
use crate::job;
use crate::request::{self, POLICY_KEYS};
use crate::store::Location;

pub fn prune(call: &Call) -> Result<String> {
    call.arity(2, 2, "(location, policy)")?;
    let location = call.text(0, "location")?;
    let mut map = call.options(1)?;
    let s3 = options::take_s3(&mut map, Location::parse(&location)?.is_s3())?;
    let policy = options::decode(options::take(&mut map, POLICY_KEYS))?;
    let req = request::prune(location, s3, policy, options::decode(map)?)?;
    json(&job::prune(&call.connection(), &req)?)
}
