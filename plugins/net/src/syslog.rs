//! stub
use ulog_engine::Registry;
/// stub
pub fn register(_r: &mut Registry) {}
