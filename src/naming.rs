//! Backup names from strftime patterns (`db-%Y%m%d.gz`), filled in at call time.

use std::fmt::Write as _;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Local, Utc};

use crate::error::{Error, Result};

/// Expands every chrono strftime specifier in `pattern` at `time`, in UTC or local time.
/// An unknown specifier is an error naming it, never a literal `%Q` in a file name.
pub fn expand(pattern: &str, time: DateTime<Utc>, utc: bool) -> Result<String> {
    if pattern.is_empty() {
        return Err(Error::usage("the name pattern is empty"));
    }
    let items: Vec<Item> = StrftimeItems::new(pattern).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::usage(format!(
            "invalid strftime specifier {} in '{pattern}': use chrono's specifiers such as \
             %Y %m %d %H %M %S, and %% for a literal %",
            first_bad_specifier(pattern)
        )));
    }
    let mut out = String::new();
    // write! reports a formatting failure as fmt::Error instead of panicking like to_string().
    let written = if utc {
        write!(out, "{}", time.format_with_items(items.into_iter()))
    } else {
        let local = time.with_timezone(&Local);
        write!(out, "{}", local.format_with_items(items.into_iter()))
    };
    if written.is_err() {
        return Err(Error::usage(format!(
            "cannot format '{pattern}' with this time"
        )));
    }
    if out.contains('\0') {
        return Err(Error::usage("the name contains a NUL character"));
    }
    Ok(out)
}

/// The first `%…` sequence chrono rejects, for the error message.
fn first_bad_specifier(pattern: &str) -> String {
    let accepted = |spec: &str| StrftimeItems::new(spec).all(|i| !matches!(i, Item::Error));
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        // A specifier is %X or a padded/modified form such as %-d, %.3f or %:z (2 to 4 chars).
        let candidates: Vec<&str> = (2..=4)
            .filter_map(|n| {
                rest[at..]
                    .char_indices()
                    .nth(n)
                    .map(|(i, _)| &rest[at..at + i])
                    .or((rest[at..].chars().count() == n).then_some(&rest[at..]))
            })
            .collect();
        match candidates.iter().find(|spec| accepted(spec)) {
            Some(spec) => rest = &rest[at + spec.len()..],
            None => {
                let shown: String = rest[at..].chars().take(2).collect();
                return format!("'{shown}'");
            }
        }
    }
    String::from("(unknown)")
}

/// A glob matching every name `pattern` can produce (`db-%d.gz` → `db-??.gz`): the backups of
/// one series, as `if_changed` and `keep` see them when no `match` is given. Fixed-width
/// numeric specifiers become that many `?`, so `app-%d` and `app-%d%H` are different series;
/// the others become `*`.
pub fn to_glob(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' if chars.peek() == Some(&'%') => {
                chars.next();
                out.push('%');
            }
            '%' => {
                // The specifier with its flags and modifiers, e.g. %d, %-d, %.3f, %:z.
                let mut spec = String::new();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    spec.push(n);
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
                let width = match spec.as_str() {
                    "Y" | "G" => 4,
                    "j" => 3,
                    "m" | "d" | "H" | "M" | "S" | "y" | "g" | "U" | "W" | "V" | "I" => 2,
                    "u" | "w" => 1,
                    _ => 0,
                };
                if width > 0 {
                    out.extend(std::iter::repeat_n('?', width));
                } else if !out.ends_with('*') {
                    out.push('*');
                }
            }
            '*' | '?' | '[' | ']' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 7, 14, 5, 9).unwrap()
    }

    #[test]
    fn expands_the_seed_schemes() {
        assert_eq!(expand("db-%H.gz", at(), true).unwrap(), "db-14.gz");
        assert_eq!(expand("db-%d.gz", at(), true).unwrap(), "db-07.gz");
        assert_eq!(expand("db-%d%H.gz", at(), true).unwrap(), "db-0714.gz");
        assert_eq!(
            expand("/b/app-%Y%m%d-%H%M%S.db.zst", at(), true).unwrap(),
            "/b/app-20260307-140509.db.zst"
        );
        assert_eq!(expand("w%V-%a-100%%", at(), true).unwrap(), "w10-Sat-100%");
        assert_eq!(expand("plain.db", at(), true).unwrap(), "plain.db");
    }

    #[test]
    fn globs_match_what_the_pattern_names() {
        assert_eq!(to_glob("db-%d.gz"), "db-??.gz");
        assert_eq!(to_glob("db-%Y%m%d-%H.db.zst"), "db-????????-??.db.zst");
        assert_eq!(to_glob("a%%b-%-d[1].gz"), "a%b-*[[]1[]].gz");
        assert_eq!(to_glob("x-%s-%a.gz"), "x-*-*.gz");
        let g = glob::Pattern::new(&to_glob("db-%d%H.gz")).unwrap();
        assert!(g.matches(&expand("db-%d%H.gz", at(), true).unwrap()));
        assert!(!g.matches("other-0714.gz"));
        assert!(
            !g.matches("db-07.gz"),
            "the %d series is not the %d%H series"
        );
    }

    #[test]
    fn rejects_unknown_specifiers_naming_them() {
        let err = expand("db-%Q.gz", at(), true).unwrap_err();
        assert!(err.message.contains("'%Q'"), "{}", err.message);
        let err = expand("db-%", at(), true).unwrap_err();
        assert!(err.message.contains("invalid strftime"), "{}", err.message);
        assert!(expand("", at(), true).is_err());
    }
}
