//! Options: a JSON object text as the last argument. Unknown keys and wrong types are errors
//! naming the key, because a typo (`"levle": 9`) must not silently do nothing.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::store::s3::{S3Options, OPTION_KEYS as S3_KEYS};

/// Parses the options text (None or SQL NULL: no options) into an object.
pub fn object(text: Option<&str>) -> Result<Map<String, Value>> {
    let Some(text) = text else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::usage(
            "options must be a JSON object, like '{\"level\": 9}'",
        )),
        Err(e) => Err(Error::usage(format!("options are not valid JSON: {e}"))),
    }
}

/// Moves the entries whose keys are in `keys` out of `map` into a new object.
pub fn take(map: &mut Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| map.remove(*k).map(|v| (k.to_string(), v)))
        .collect()
}

/// Splits the S3 keys (endpoint, region, credentials, transfer settings) out of `map`.
/// `s3` says whether the location is an S3 one; for a local one any S3 key is an error.
pub fn take_s3(map: &mut Map<String, Value>, s3: bool) -> Result<S3Options> {
    let taken = take(map, S3_KEYS);
    if !s3 {
        if let Some(key) = taken.keys().next() {
            return Err(Error::usage(format!(
                "option '{key}' applies only to s3:// locations"
            )));
        }
    }
    decode(taken)
}

/// Decodes an object into `T` (which denies unknown fields), naming the key on any error.
pub fn decode<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.replace(" at line 1 column 0", "");
        if path == "." || path.is_empty() {
            Error::usage(format!("option {inner}"))
        } else {
            Error::usage(format!("option '{path}': {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Opts {
        level: Option<i64>,
        quick: Option<bool>,
    }

    #[test]
    fn unknown_key_and_wrong_type_name_the_key() {
        let err = decode::<Opts>(object(Some(r#"{"levle": 9}"#)).unwrap()).unwrap_err();
        assert!(err.message.contains("levle"), "{}", err.message);
        let err = decode::<Opts>(object(Some(r#"{"level": "high"}"#)).unwrap()).unwrap_err();
        assert!(
            err.message.starts_with("option 'level':"),
            "{}",
            err.message
        );
        assert!(object(Some("[1]")).is_err());
        assert!(object(Some("{")).is_err());
        assert!(decode::<Opts>(object(None).unwrap()).is_ok());
    }
}
