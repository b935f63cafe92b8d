//! restore_backup(location [, dest_path [, options]]).

use super::{json, options, Call};
use crate::error::Result;
use crate::job;
use crate::request;
use crate::store::Location;

pub fn restore(call: &Call) -> Result<String> {
    call.arity(1, 3, "(location [, dest_path [, options]])")?;
    let location = call.text(0, "location")?;
    let dest = call.optional_text(1, "dest_path")?;
    let mut map = call.options(2)?;
    let s3 = options::take_s3(&mut map, Location::parse(&location)?.is_s3())?;
    let conn = call.connection();
    let req = request::restore(location, dest, s3, options::decode(map)?, &conn)?;
    let _progress = crate::progress::show(call.name, req.progress);
    json(&job::restore(&conn, &req)?)
}
