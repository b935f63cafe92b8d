//! Backup names from strftime patterns (`db-%Y%m%d.gz`), filled in at call time.

use std::fmt::Write as _;

use std::collections::BTreeSet;

use chrono::format::{Fixed, Item, Numeric, Pad, StrftimeItems};
use chrono::{DateTime, Local, TimeZone, Utc};

use crate::error::{Error, Result};
use crate::store::Entry;

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

/// The names that belong to one backup series, as `keep` and `if_changed` see them: a user's
/// `match` glob, or the strftime pattern itself, where each specifier matches exactly what it
/// can print (`%d` two digits, `%s` a number, `%a` a weekday name, `%Z` a zone), never "anything".
#[derive(Debug, Clone)]
pub enum Series {
    Glob(glob::Pattern),
    Pattern(Vec<Token>),
}

/// One piece of a name pattern, for [`Series::Pattern`].
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Literal(String),
    /// `min..=max` ASCII digits.
    Digits(usize, usize),
    /// A number right-aligned in `width` characters with spaces (`%e`).
    Spaced(usize),
    OneOf(&'static [&'static str]),
    /// Any one of these sequences.
    Either(Vec<Vec<Token>>),
}

const WEEKDAYS: &[&str] = &["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const WEEKDAYS_LONG: &[&str] = &[
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: &[&str] = &[
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const MONTHS_LONG: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const SIGN: &[&str] = &["+", "-"];

impl Series {
    /// A user's `match` glob. `*` and `?` do not match `/`, so `db-*.gz` does not reach into
    /// sub-folders of an S3 prefix; matching is case-sensitive.
    pub fn glob(pattern: &str) -> Result<Series> {
        glob::Pattern::new(pattern).map(Series::Glob).map_err(|e| {
            Error::usage(format!(
                "match: invalid glob '{pattern}': {} at position {}",
                e.msg, e.pos
            ))
        })
    }

    /// The series of a strftime name pattern (`db-%Y%m%d.gz`).
    pub fn pattern(pattern: &str) -> Series {
        let tokens = StrftimeItems::new(pattern).map(|i| token(&i)).collect();
        Series::Pattern(tokens)
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Series::Glob(glob) => glob.matches_with(name, GLOB_OPTIONS),
            Series::Pattern(tokens) => {
                ends(tokens, name.as_bytes(), BTreeSet::from([0])).contains(&name.len())
            }
        }
    }

    pub fn select(&self, entries: Vec<Entry>) -> Vec<Entry> {
        entries
            .into_iter()
            .filter(|e| self.contains(&e.name))
            .collect()
    }
}

const GLOB_OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// The entries in `series`; no series: all of them.
pub(crate) fn select(series: Option<&Series>, entries: Vec<Entry>) -> Vec<Entry> {
    match series {
        Some(series) => series.select(entries),
        None => entries,
    }
}

fn digits(n: usize) -> Token {
    Token::Digits(n, n)
}

fn lit(text: &str) -> Token {
    Token::Literal(text.to_string())
}

fn offset(parts: usize) -> Vec<Token> {
    let mut seq = vec![Token::OneOf(SIGN), digits(2)];
    for _ in 1..parts {
        seq.extend([lit(":"), digits(2)]);
    }
    seq
}

/// What one strftime item can print.
fn token(item: &Item) -> Token {
    match item {
        Item::Literal(s) | Item::Space(s) => lit(s),
        Item::OwnedLiteral(s) | Item::OwnedSpace(s) => lit(s),
        Item::Numeric(Numeric::Timestamp, _) => Token::Either(vec![
            vec![Token::Digits(1, 20)],
            vec![lit("-"), Token::Digits(1, 20)],
        ]),
        Item::Numeric(numeric, pad) => {
            let width = match numeric {
                Numeric::Year | Numeric::IsoYear => 4,
                Numeric::Ordinal => 3,
                Numeric::Nanosecond => 9,
                Numeric::Quarter | Numeric::NumDaysFromSun | Numeric::WeekdayFromMon => 1,
                Numeric::YearDiv100
                | Numeric::YearMod100
                | Numeric::IsoYearDiv100
                | Numeric::IsoYearMod100
                | Numeric::Month
                | Numeric::Day
                | Numeric::WeekFromSun
                | Numeric::WeekFromMon
                | Numeric::IsoWeek
                | Numeric::Hour
                | Numeric::Hour12
                | Numeric::Minute
                | Numeric::Second => 2,
                _ => return shape(item),
            };
            match pad {
                Pad::Zero => digits(width),
                Pad::Space => Token::Spaced(width),
                Pad::None => Token::Digits(1, width),
            }
        }
        Item::Fixed(fixed) => match fixed {
            Fixed::ShortMonthName => Token::OneOf(MONTHS),
            Fixed::LongMonthName => Token::OneOf(MONTHS_LONG),
            Fixed::ShortWeekdayName => Token::OneOf(WEEKDAYS),
            Fixed::LongWeekdayName => Token::OneOf(WEEKDAYS_LONG),
            Fixed::LowerAmPm => Token::OneOf(&["am", "pm"]),
            Fixed::UpperAmPm => Token::OneOf(&["AM", "PM"]),
            Fixed::Nanosecond => Token::Either(vec![
                vec![],
                vec![lit("."), digits(3)],
                vec![lit("."), digits(6)],
                vec![lit("."), digits(9)],
            ]),
            Fixed::Nanosecond3 => Token::Either(vec![vec![lit("."), digits(3)]]),
            Fixed::Nanosecond6 => Token::Either(vec![vec![lit("."), digits(6)]]),
            Fixed::Nanosecond9 => Token::Either(vec![vec![lit("."), digits(9)]]),
            // chrono prints "UTC" for UTC and the offset for a local time.
            Fixed::TimezoneName => Token::Either(vec![vec![lit("UTC")], offset(2)]),
            Fixed::TimezoneOffset => Token::Either(vec![vec![Token::OneOf(SIGN), digits(4)]]),
            Fixed::TimezoneOffsetColon => Token::Either(vec![offset(2)]),
            Fixed::TimezoneOffsetDoubleColon => Token::Either(vec![offset(3)]),
            Fixed::TimezoneOffsetTripleColon => Token::Either(vec![offset(1)]),
            Fixed::TimezoneOffsetZ => {
                Token::Either(vec![vec![lit("Z")], vec![Token::OneOf(SIGN), digits(4)]])
            }
            Fixed::TimezoneOffsetColonZ => Token::Either(vec![vec![lit("Z")], offset(2)]),
            Fixed::RFC3339 => {
                let mut seq = vec![digits(4), lit("-"), digits(2), lit("-"), digits(2)];
                seq.extend([
                    lit("T"),
                    digits(2),
                    lit(":"),
                    digits(2),
                    lit(":"),
                    digits(2),
                ]);
                seq.push(token(&Item::Fixed(Fixed::Nanosecond)));
                seq.push(Token::Either(vec![vec![lit("Z")], offset(2)]));
                Token::Either(vec![seq])
            }
            Fixed::RFC2822 => {
                let mut seq = vec![Token::OneOf(WEEKDAYS), lit(", "), Token::Digits(1, 2)];
                seq.extend([
                    lit(" "),
                    Token::OneOf(MONTHS),
                    lit(" "),
                    digits(4),
                    lit(" "),
                ]);
                seq.extend([
                    digits(2),
                    lit(":"),
                    digits(2),
                    lit(":"),
                    digits(2),
                    lit(" "),
                ]);
                seq.extend([Token::OneOf(SIGN), digits(4)]);
                Token::Either(vec![seq])
            }
            _ => shape(item),
        },
        // Only patterns that `expand` accepted get here; an error item matches nothing.
        Item::Error => Token::Either(Vec::new()),
    }
}

/// For an item chrono does not describe to us (its internal ones, `%3f`, `%#z`): the shape of
/// what it prints at a sample time, each digit a digit and each sign either sign.
fn shape(item: &Item) -> Token {
    let sample = Utc
        .with_ymd_and_hms(2001, 2, 3, 4, 5, 6)
        .single()
        .map(|t| t + chrono::Duration::nanoseconds(123_456_789));
    let mut out = String::new();
    let printed = sample.is_some_and(|t| {
        write!(
            out,
            "{}",
            t.format_with_items(std::iter::once(item.clone()))
        )
        .is_ok()
    });
    if !printed {
        return Token::Either(Vec::new());
    }
    let seq = out
        .chars()
        .map(|c| match c {
            '0'..='9' => digits(1),
            '+' | '-' => Token::OneOf(SIGN),
            _ => lit(c.encode_utf8(&mut [0; 4])),
        })
        .collect();
    Token::Either(vec![seq])
}

/// Every position in `name` where `tokens`, started at any of `starts`, can end. A set of
/// positions per token, so matching costs tokens × name length, never backtracking.
fn ends(tokens: &[Token], name: &[u8], starts: BTreeSet<usize>) -> BTreeSet<usize> {
    let mut at = starts;
    for token in tokens {
        let mut next = BTreeSet::new();
        for &p in &at {
            let rest = name.get(p..).unwrap_or_default();
            match token {
                Token::Literal(text) => {
                    if rest.starts_with(text.as_bytes()) {
                        next.insert(p + text.len());
                    }
                }
                Token::Digits(min, max) => {
                    let run = rest.iter().take(*max).take_while(|b| b.is_ascii_digit());
                    let run = run.count();
                    next.extend((*min..=run).map(|n| p + n));
                }
                Token::Spaced(width) => {
                    let Some(field) = rest.get(..*width) else {
                        continue;
                    };
                    let spaces = field.iter().take_while(|b| **b == b' ').count();
                    let number = field.get(spaces..).unwrap_or_default();
                    if !number.is_empty() && number.iter().all(u8::is_ascii_digit) {
                        next.insert(p + width);
                    }
                }
                Token::OneOf(words) => {
                    for word in *words {
                        if rest.starts_with(word.as_bytes()) {
                            next.insert(p + word.len());
                        }
                    }
                }
                Token::Either(seqs) => {
                    for seq in seqs {
                        next.extend(ends(seq, name, BTreeSet::from([p])));
                    }
                }
            }
        }
        if next.is_empty() {
            return next;
        }
        at = next;
    }
    at
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
    fn rejects_unknown_specifiers_naming_them() {
        let err = expand("db-%Q.gz", at(), true).unwrap_err();
        assert!(err.message.contains("'%Q'"), "{}", err.message);
        let err = expand("db-%", at(), true).unwrap_err();
        assert!(err.message.contains("invalid strftime"), "{}", err.message);
        assert!(expand("", at(), true).is_err());
    }

    #[test]
    fn a_series_holds_exactly_what_its_pattern_prints() {
        let specs = [
            "%Y", "%C", "%y", "%G", "%g", "%m", "%b", "%B", "%h", "%d", "%e", "%a", "%A", "%w",
            "%u", "%U", "%W", "%V", "%j", "%D", "%x", "%F", "%v", "%H", "%k", "%I", "%l", "%P",
            "%p", "%M", "%S", "%f", "%.f", "%.3f", "%.6f", "%.9f", "%3f", "%6f", "%9f", "%R", "%T",
            "%X", "%r", "%Z", "%z", "%:z", "%::z", "%:::z", "%c", "%+", "%s", "%-d", "%_d", "%0e",
            "%-j", "%%", "%t", "%n",
        ];
        let times = [
            at(),
            Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap()
                + chrono::Duration::milliseconds(5),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
        ];
        for spec in specs {
            let pattern = format!("db-{spec}.gz");
            let series = Series::pattern(&pattern);
            for t in times {
                for utc in [true, false] {
                    let name = expand(&pattern, t, utc).unwrap();
                    assert!(series.contains(&name), "{pattern} does not hold {name:?}");
                }
            }
            for foreign in ["db-.gz", "db-x.gz", "app.db", "db-12.gz.txt", "db-a b.gz"] {
                // `%.f` prints nothing at a whole second.
                let empty_ok = spec == "%.f" && foreign == "db-.gz";
                assert!(
                    empty_ok || !series.contains(foreign),
                    "{pattern} holds {foreign:?}"
                );
            }
        }
        // The issue's specifiers no longer mean "anything".
        let s = Series::pattern("%s.db");
        assert!(s.contains("1764115200.db") && s.contains("-5.db"));
        assert!(!s.contains("app.db") && !s.contains(".db") && !s.contains("1x.db"));
        let s = Series::pattern("x-%a-%b-%Z.gz");
        assert!(s.contains("x-Sat-Mar-UTC.gz") && s.contains("x-Sat-Mar-+01:00.gz"));
        assert!(!s.contains("x-Foo-Mar-UTC.gz") && !s.contains("x-Sat-Mar-anything.gz"));
        let s = Series::pattern("db-%d.gz");
        assert!(s.contains("db-07.gz") && !s.contains("db-7.gz") && !s.contains("db-0714.gz"));
        let s = Series::pattern("db-%+.gz");
        assert!(s.contains("db-2026-03-07T14:05:09+00:00.gz"));
        assert!(!s.contains("db-2026-03-07.gz"));
        // Many variable-width specifiers in a row cost no backtracking.
        let long = "%-d".repeat(200);
        assert!(!Series::pattern(&long).contains(&"1".repeat(1000)));
    }

    // ---- match globs (moved from retention.rs) ----

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.to_string(),
            url: format!("/b/{name}"),
            size: 1,
            modified: at(),
            sha256: None,
        }
    }

    fn matches(glob: Option<&str>, name: &str) -> Result<bool> {
        let series = glob.map(Series::glob).transpose()?;
        Ok(!select(series.as_ref(), vec![entry(name)]).is_empty())
    }

    #[test]
    fn match_globs() {
        assert!(matches(None, "anything").unwrap());
        assert!(matches(Some("db-*.gz"), "db-20.gz").unwrap());
        assert!(!matches(Some("db-*.gz"), "db-20.zst").unwrap());
        assert!(!matches(Some("db-*.gz"), "old/db-20.gz").unwrap());
        assert!(matches(Some("*/db-*.gz"), "old/db-20.gz").unwrap());
        assert!(!matches(Some("DB-*"), "db-1").unwrap());
        assert!(matches(Some("db-[0-9][0-9].gz"), "db-07.gz").unwrap());
        let err = matches(Some("db-[.gz"), "db-1.gz").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::Usage);
        assert!(
            err.message.starts_with("match: invalid glob 'db-[.gz'"),
            "{}",
            err.message
        );
    }

    #[test]
    fn select_filters_names() {
        let list = vec![entry("db-01.gz"), entry("notes.txt"), entry("db-02.gz")];
        let names = |v: Vec<Entry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        let series = Series::glob("db-*").unwrap();
        assert_eq!(
            names(select(Some(&series), list.clone())),
            ["db-01.gz", "db-02.gz"]
        );
        assert_eq!(select(None, list).len(), 3);
        assert!(Series::glob("[").is_err());
    }
}
