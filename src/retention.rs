//! Which backups to keep: restic/borg style `forget --keep-*` rules applied to a listing.
//!
//! Plain Rust over [`Entry`] lists: no SQLite, no storage. The caller lists a store, keeps the
//! names in the series ([`crate::naming::select`]), calls [`plan`], then deletes `Plan::delete`.
//!
//! # Semantics (restic's)
//!
//! Backups are sorted newest first (equal times: name descending, so names that embed a
//! timestamp still sort newest first and results are deterministic). Then, independently:
//!
//! * `keep_last n` keeps the `n` newest backups.
//! * `keep_hourly`, `keep_daily`, `keep_weekly`, `keep_monthly`, `keep_yearly` with count `n`
//!   walk the backups newest to oldest and keep one whenever its bucket (hour, day, ISO-8601
//!   week, month, year) differs from the bucket of the backup this same rule kept last, until
//!   `n` backups are kept: the newest backup of each of the `n` most recent buckets that have
//!   backups. Buckets are computed in UTC, or in the machine's local time (with the offset in
//!   force at each backup's time, so DST is handled) when `utc` is false.
//! * `keep_within d` keeps every backup whose time is at or after `now - d` (inclusive).
//!
//! A backup kept by any rule is kept; all others are deleted. Backups dated after `now` (clock
//! skew) are always kept, with the single reason `"future"`, and take no part in the rules, so
//! a bogus timestamp cannot use up a `keep_last` slot and push out the real newest backup.
//!
//! A policy that keeps nothing (no rule, or all counts 0 and no or a zero `keep_within`) is a
//! usage error: pruning must never silently delete everything.
//!
//! # `keep_within` durations
//!
//! A sequence of `<number><unit>`, e.g. `30d`, `36h`, `1y6m`, `2w`, `1d12h`. Units: `y` calendar
//! years, `m` calendar months (as in restic, `m` is months, not minutes), `w` weeks (7 days),
//! `d` days (24 hours), `h` hours, `min` minutes, `s` seconds. Years and months are calendar
//! arithmetic on `now` in UTC: `1m` before March 31 is February 28 (or 29), `1y` before
//! 2024-02-29 is 2023-02-28. The units are applied largest first.
//!
//! # Reason texts
//!
//! Each kept backup carries every rule that kept it, in this order:
//! `"last"`, `"hourly 2026-11-20 14h"`, `"daily 2026-11-20"`, `"weekly 2026-W47"` (ISO year
//! and week), `"monthly 2026-11"`, `"yearly 2026"`, `"within <duration as given>"`, or only
//! `"future"`. Bucket labels are in the zone the buckets were computed in.

use std::cmp::Ordering;

use chrono::{
    DateTime, Datelike, FixedOffset, Local, Months, NaiveDateTime, Offset, Timelike, Utc,
};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::Entry;

/// The user's retention options. Counts of 0 mean the rule is off.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// A duration such as `"30d"` or `"1y6m"`; see the module documentation.
    pub keep_within: Option<String>,
}

/// A backup to keep, with every rule that keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub entry: Entry,
    pub reasons: Vec<String>,
}

/// The outcome of applying a policy. Both lists are sorted newest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub keep: Vec<Kept>,
    pub delete: Vec<Entry>,
}

const NOTHING_KEPT: &str = "the policy keeps nothing: give at least one of keep_last, \
     keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within";

/// A parsed `keep_within` duration. Calendar parts stay separate from the fixed-length ones
/// because a month has no fixed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Within {
    pub months: u32,
    pub seconds: i64,
}

impl Within {
    /// Parses `"1y6m"`-style text; see the module documentation for units.
    pub fn parse(text: &str) -> Result<Within> {
        let bad = || {
            Error::usage(format!(
                "keep_within: cannot read '{text}': use a number and a unit (h, d, w, m, y), \
                 e.g. '7d' or '1y6m'"
            ))
        };
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut within = Within::default();
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(bad());
            }
            let number: u32 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let letters = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            let unit = &rest[..letters];
            rest = &rest[letters..];
            let n = i64::from(number);
            // Checked arithmetic: absurd values are a usage error, never an overflow panic.
            let (months, seconds) = match unit {
                "y" => (number.checked_mul(12).ok_or_else(bad)?, 0),
                "m" => (number, 0),
                "w" => (0, n * 7 * 86_400),
                "d" => (0, n * 86_400),
                "h" => (0, n * 3_600),
                "min" => (0, n * 60),
                "s" => (0, n),
                _ => return Err(bad()),
            };
            within.months = within.months.checked_add(months).ok_or_else(bad)?;
            within.seconds = within.seconds.checked_add(seconds).ok_or_else(bad)?;
        }
        Ok(within)
    }

    pub fn is_zero(&self) -> bool {
        self.months == 0 && self.seconds == 0
    }

    /// The oldest time still kept, or `None` when it is before any representable time (then
    /// everything is within).
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        now.checked_sub_months(Months::new(self.months))?
            .checked_sub_signed(chrono::TimeDelta::try_seconds(self.seconds)?)
    }
}

impl Policy {
    /// Checks the policy without applying it: `keep_within` parses and at least one rule keeps
    /// something. [`plan`] calls this too; call it early to fail before any work.
    pub fn check(&self) -> Result<()> {
        self.within().map(|_| ())
    }

    /// Parses `keep_within` and enforces "keeps something".
    fn within(&self) -> Result<Option<Within>> {
        let within = match &self.keep_within {
            Some(text) => Some(Within::parse(text)?),
            None => None,
        };
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        let any_count = counts.iter().any(|c| c.unwrap_or(0) > 0);
        // A zero keep_within keeps nothing either; treat it as absent for this check.
        let any_within = within.is_some_and(|w| !w.is_zero());
        if !any_count && !any_within {
            return Err(Error::usage(NOTHING_KEPT));
        }
        Ok(within.filter(|w| !w.is_zero()))
    }
}

/// Time buckets of the calendar rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn rule(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }
}

/// The bucket label of `time` seen at `offset` (`"2026-11-20"`, `"2026-W47"`...). Two backups
/// share a bucket exactly when their labels are equal; the label also goes into the reason.
pub fn bucket(time: DateTime<Utc>, offset: FixedOffset, period: Period) -> String {
    let t: NaiveDateTime = time.with_timezone(&offset).naive_local();
    match period {
        Period::Hour => format!("{} {:02}h", t.format("%Y-%m-%d"), t.hour()),
        Period::Day => t.format("%Y-%m-%d").to_string(),
        Period::Week => {
            let week = t.iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        }
        Period::Month => format!("{}-{:02}", t.year(), t.month()),
        Period::Year => t.year().to_string(),
    }
}

/// Applies `policy` to `entries`; see the module documentation for the rules. Buckets are in
/// UTC when `utc`, else in the machine's local time zone.
pub fn plan(entries: Vec<Entry>, policy: &Policy, now: DateTime<Utc>, utc: bool) -> Result<Plan> {
    if utc {
        plan_with_offsets(entries, policy, now, |_| Utc.fix())
    } else {
        plan_with_offsets(entries, policy, now, |t| {
            t.with_timezone(&Local).offset().fix()
        })
    }
}

/// The one "newest first" order of backups (module doc): time descending, equal times by name
/// descending. `backup_list`, pruning and `if_changed` all use it, so they agree on which
/// backup is the newest.
pub fn newest_first(a: &Entry, b: &Entry) -> Ordering {
    b.modified
        .cmp(&a.modified)
        .then_with(|| b.name.cmp(&a.name))
}

/// The first of `entries` in [`newest_first`] order.
pub fn newest(entries: impl IntoIterator<Item = Entry>) -> Option<Entry> {
    entries.into_iter().min_by(newest_first)
}

/// [`plan`] with the zone given as "offset in force at this instant", so tests (and callers
/// with a zone of their own) do not depend on the machine's time zone.
pub fn plan_with_offsets(
    mut entries: Vec<Entry>,
    policy: &Policy,
    now: DateTime<Utc>,
    offset_at: impl Fn(DateTime<Utc>) -> FixedOffset,
) -> Result<Plan> {
    let within = policy.within()?;
    entries.sort_by(newest_first);

    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); entries.len()];
    // Future entries are kept regardless and take no part in the rules.
    let present: Vec<usize> = (0..entries.len())
        .filter(|&i| {
            let future = entries[i].modified > now;
            if future {
                reasons[i].push("future".to_string());
            }
            !future
        })
        .collect();

    let last = policy.keep_last.unwrap_or(0) as usize;
    for &i in present.iter().take(last) {
        reasons[i].push("last".to_string());
    }

    let periods = [
        (policy.keep_hourly, Period::Hour),
        (policy.keep_daily, Period::Day),
        (policy.keep_weekly, Period::Week),
        (policy.keep_monthly, Period::Month),
        (policy.keep_yearly, Period::Year),
    ];
    for (count, period) in periods {
        let mut left = count.unwrap_or(0);
        let mut previous: Option<String> = None;
        for &i in &present {
            if left == 0 {
                break;
            }
            let label = bucket(entries[i].modified, offset_at(entries[i].modified), period);
            if previous.as_deref() != Some(label.as_str()) {
                reasons[i].push(format!("{} {label}", period.rule()));
                previous = Some(label);
                left -= 1;
            }
        }
    }

    if let (Some(within), Some(text)) = (within, &policy.keep_within) {
        let cutoff = within.cutoff(now);
        for &i in &present {
            if cutoff.is_none_or(|c| entries[i].modified >= c) {
                reasons[i].push(format!("within {}", text.trim()));
            }
        }
    }

    let mut plan = Plan::default();
    for (entry, reasons) in entries.into_iter().zip(reasons) {
        if reasons.is_empty() {
            plan.delete.push(entry);
        } else {
            plan.keep.push(Kept { entry, reasons });
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use chrono::{Duration, TimeZone};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn entry(name: &str, modified: DateTime<Utc>) -> Entry {
        Entry {
            name: name.to_string(),
            url: format!("/b/{name}"),
            size: 1,
            modified,
            sha256: None,
        }
    }

    /// One entry per time, named by its UTC time so expectations read naturally.
    fn entries(times: &[DateTime<Utc>]) -> Vec<Entry> {
        times
            .iter()
            .map(|t| entry(&t.format("%Y-%m-%dT%H:%M").to_string(), *t))
            .collect()
    }

    fn kept_names(plan: &Plan) -> Vec<&str> {
        plan.keep.iter().map(|k| k.entry.name.as_str()).collect()
    }

    fn deleted_names(plan: &Plan) -> Vec<&str> {
        plan.delete.iter().map(|e| e.name.as_str()).collect()
    }

    fn reasons_of<'a>(plan: &'a Plan, name: &str) -> &'a [String] {
        &plan
            .keep
            .iter()
            .find(|k| k.entry.name == name)
            .unwrap_or_else(|| panic!("{name} not kept"))
            .reasons
    }

    fn utc_plan(list: Vec<Entry>, policy: &Policy, now: DateTime<Utc>) -> Plan {
        plan(list, policy, now, true).unwrap()
    }

    // ---- keep_within parsing ----

    #[test]
    fn parses_durations() {
        let w = |s| Within::parse(s).unwrap();
        assert_eq!(
            w("30d"),
            Within {
                months: 0,
                seconds: 30 * 86_400
            }
        );
        assert_eq!(
            w("36h"),
            Within {
                months: 0,
                seconds: 36 * 3_600
            }
        );
        assert_eq!(
            w("1y6m"),
            Within {
                months: 18,
                seconds: 0
            }
        );
        assert_eq!(
            w("2w"),
            Within {
                months: 0,
                seconds: 14 * 86_400
            }
        );
        assert_eq!(
            w("1d12h"),
            Within {
                months: 0,
                seconds: 36 * 3_600
            }
        );
        assert_eq!(
            w("90min"),
            Within {
                months: 0,
                seconds: 5_400
            }
        );
        assert_eq!(
            w("45s"),
            Within {
                months: 0,
                seconds: 45
            }
        );
        assert_eq!(
            w(" 7d "),
            Within {
                months: 0,
                seconds: 7 * 86_400
            }
        );
        assert!(w("0d").is_zero());
    }

    #[test]
    fn rejects_bad_durations_with_usage_error() {
        for bad in [
            "",
            "3x",
            "d",
            "7",
            "7 d",
            "-1d",
            "1.5d",
            "7D",
            "1y6",
            "m1",
            "99999999999d",
            "4294967295y",
        ] {
            let err = Within::parse(bad).unwrap_err();
            assert_eq!(err.kind, Kind::Usage, "{bad:?}");
            assert!(
                err.message.starts_with("keep_within: cannot read"),
                "{bad:?}"
            );
        }
        assert_eq!(
            Within::parse("3x").unwrap_err().message,
            "keep_within: cannot read '3x': use a number and a unit (h, d, w, m, y), \
             e.g. '7d' or '1y6m'"
        );
    }

    #[test]
    fn calendar_months_clamp_to_month_end() {
        let now = at(2026, 3, 31, 12, 0);
        assert_eq!(
            Within::parse("1m").unwrap().cutoff(now),
            Some(at(2026, 2, 28, 12, 0))
        );
        let leap = at(2024, 2, 29, 0, 0);
        assert_eq!(
            Within::parse("1y").unwrap().cutoff(leap),
            Some(at(2023, 2, 28, 0, 0))
        );
        assert_eq!(
            Within::parse("1y1m1d1h")
                .unwrap()
                .cutoff(at(2026, 6, 15, 10, 0)),
            Some(at(2025, 5, 14, 9, 0))
        );
        // Far beyond chrono's range: everything is within.
        assert_eq!(Within::parse("4000000y").unwrap().cutoff(now), None);
    }

    // ---- policy checks ----

    #[test]
    fn a_policy_that_keeps_nothing_is_a_usage_error() {
        let zero = Some(0);
        let policies = [
            Policy::default(),
            Policy {
                keep_last: zero,
                keep_hourly: zero,
                keep_daily: zero,
                keep_weekly: zero,
                keep_monthly: zero,
                keep_yearly: zero,
                keep_within: None,
            },
            Policy {
                keep_last: zero,
                keep_within: Some("0d".into()),
                ..Policy::default()
            },
        ];
        for policy in policies {
            let err = plan(
                entries(&[at(2026, 1, 1, 0, 0)]),
                &policy,
                at(2026, 1, 2, 0, 0),
                true,
            )
            .unwrap_err();
            assert_eq!(err.kind, Kind::Usage);
            assert_eq!(err.message, NOTHING_KEPT);
            assert_eq!(policy.check().unwrap_err().message, NOTHING_KEPT);
        }
        // Even with nothing to prune, the error still shows up (so a typo is caught on day 1).
        assert!(plan(vec![], &Policy::default(), at(2026, 1, 1, 0, 0), true).is_err());
    }

    #[test]
    fn a_bad_keep_within_fails_the_plan() {
        let policy = Policy {
            keep_last: Some(3),
            keep_within: Some("3x".into()),
            ..Policy::default()
        };
        let err = plan(vec![], &policy, at(2026, 1, 1, 0, 0), true).unwrap_err();
        assert_eq!(err.kind, Kind::Usage);
        assert!(err.message.contains("'3x'"));
    }

    #[test]
    fn policy_deserializes_and_rejects_unknown_fields() {
        let p: Policy =
            serde_json::from_str(r#"{"keep_daily": 7, "keep_within": "1y6m"}"#).unwrap();
        assert_eq!(p.keep_daily, Some(7));
        assert_eq!(p.keep_within.as_deref(), Some("1y6m"));
        assert!(serde_json::from_str::<Policy>(r#"{"keep_dialy": 7}"#).is_err());
        assert!(serde_json::from_str::<Policy>(r#"{"keep_daily": -1}"#).is_err());
    }

    // ---- rules ----

    #[test]
    fn empty_list_gives_empty_plan() {
        let policy = Policy {
            keep_last: Some(3),
            ..Policy::default()
        };
        assert_eq!(
            utc_plan(vec![], &policy, at(2026, 1, 1, 0, 0)),
            Plan::default()
        );
    }

    #[test]
    fn keep_last_keeps_the_newest_and_sorts_both_lists() {
        let times: Vec<_> = (0..5).map(|i| at(2026, 1, 1 + i, 0, 0)).collect();
        let mut list = entries(&times);
        list.reverse(); // input order must not matter
        list.swap(1, 3);
        let policy = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        let p = utc_plan(list, &policy, at(2026, 2, 1, 0, 0));
        assert_eq!(kept_names(&p), ["2026-01-05T00:00", "2026-01-04T00:00"]);
        assert_eq!(
            deleted_names(&p),
            ["2026-01-03T00:00", "2026-01-02T00:00", "2026-01-01T00:00"]
        );
        assert_eq!(reasons_of(&p, "2026-01-05T00:00"), ["last"]);
    }

    /// backup_list's order, prune's `keep_last` and `if_changed`'s newest backup are one order:
    /// equal times (same-second backups, an mtime copied by `cp -p`) included.
    #[test]
    fn listing_pruning_and_if_changed_agree_on_the_newest() {
        let t = at(2026, 1, 1, 0, 0);
        let names = ["db-b.gz", "db-c.gz", "db-a.gz", "db-0.gz"];
        let mut list: Vec<Entry> = names.iter().map(|n| entry(n, t)).collect();
        list.push(entry("db-z.gz", at(2025, 12, 31, 0, 0)));
        let mut listed = list.clone();
        listed.sort_by(newest_first);
        let listed: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            listed,
            ["db-c.gz", "db-b.gz", "db-a.gz", "db-0.gz", "db-z.gz"]
        );
        assert_eq!(newest(list.clone()).unwrap().name, listed[0]);
        for keep in 1..=list.len() {
            let policy = Policy {
                keep_last: Some(keep as u32),
                ..Policy::default()
            };
            let p = utc_plan(list.clone(), &policy, at(2026, 2, 1, 0, 0));
            assert_eq!(kept_names(&p), listed[..keep], "keep_last {keep}");
            assert_eq!(deleted_names(&p), listed[keep..], "keep_last {keep}");
        }
    }

    #[test]
    fn keep_last_larger_than_the_list_keeps_everything() {
        let list = entries(&[at(2026, 1, 1, 0, 0), at(2026, 1, 2, 0, 0)]);
        let policy = Policy {
            keep_last: Some(10),
            ..Policy::default()
        };
        let p = utc_plan(list, &policy, at(2026, 2, 1, 0, 0));
        assert_eq!(p.keep.len(), 2);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn hourly_keeps_the_24_most_recent_hours() {
        // 48 hourly backups at :05 over two days, plus an extra one at :35 in some hours.
        let start = at(2026, 11, 19, 0, 5);
        let mut times: Vec<_> = (0..48).map(|h| start + Duration::hours(h)).collect();
        times.push(at(2026, 11, 20, 23, 35)); // newest of the last hour
        times.push(at(2026, 11, 20, 10, 35)); // newest of hour 10
        let policy = Policy {
            keep_hourly: Some(24),
            ..Policy::default()
        };
        let p = utc_plan(entries(&times), &policy, at(2026, 11, 21, 0, 0));
        let mut expected: Vec<String> = (0..24)
            .rev()
            .map(|h| format!("2026-11-20T{h:02}:05"))
            .collect();
        expected[0] = "2026-11-20T23:35".into();
        expected[13] = "2026-11-20T10:35".into();
        assert_eq!(kept_names(&p), expected);
        assert_eq!(p.delete.len(), 50 - 24);
        assert!(deleted_names(&p).contains(&"2026-11-20T23:05"));
        assert!(deleted_names(&p).contains(&"2026-11-20T10:05"));
        assert!(deleted_names(&p)
            .iter()
            .all(|n| !n.starts_with("2026-11-20")
                || *n == "2026-11-20T23:05"
                || *n == "2026-11-20T10:05"));
        assert_eq!(
            reasons_of(&p, "2026-11-20T23:35"),
            ["hourly 2026-11-20 23h"]
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_the_7_most_recent_days() {
        // Two backups a day (03:00 and 15:00) for 40 days ending 2026-02-09.
        let mut times = Vec::new();
        for d in 0..40 {
            let day = at(2026, 1, 1, 3, 0) + Duration::days(d);
            times.push(day);
            times.push(day + Duration::hours(12));
        }
        let policy = Policy {
            keep_daily: Some(7),
            ..Policy::default()
        };
        let p = utc_plan(entries(&times), &policy, at(2026, 2, 10, 0, 0));
        assert_eq!(
            kept_names(&p),
            [
                "2026-02-09T15:00",
                "2026-02-08T15:00",
                "2026-02-07T15:00",
                "2026-02-06T15:00",
                "2026-02-05T15:00",
                "2026-02-04T15:00",
                "2026-02-03T15:00",
            ]
        );
        assert_eq!(p.delete.len(), 80 - 7);
        assert_eq!(reasons_of(&p, "2026-02-03T15:00"), ["daily 2026-02-03"]);
    }

    #[test]
    fn daily_skips_days_without_backups() {
        // Gaps: the rule counts days that have backups, not calendar days.
        let times = [
            at(2026, 3, 10, 1, 0),
            at(2026, 3, 7, 1, 0),
            at(2026, 3, 7, 2, 0),
            at(2026, 3, 1, 1, 0),
            at(2026, 2, 20, 1, 0),
        ];
        let policy = Policy {
            keep_daily: Some(3),
            ..Policy::default()
        };
        let p = utc_plan(entries(&times), &policy, at(2026, 3, 11, 0, 0));
        assert_eq!(
            kept_names(&p),
            ["2026-03-10T01:00", "2026-03-07T02:00", "2026-03-01T01:00"]
        );
        assert_eq!(deleted_names(&p), ["2026-03-07T01:00", "2026-02-20T01:00"]);
    }

    #[test]
    fn weekly_uses_iso_weeks_across_the_year_boundary() {
        // Daily backups 2020-12-20 .. 2021-01-12. ISO weeks: 2020-W53 is Mon 2020-12-28 ..
        // Sun 2021-01-03; 2021-W01 is 01-04 .. 01-10; 2021-W02 starts 01-11.
        let times: Vec<_> = (0..24)
            .map(|d| at(2020, 12, 20, 12, 0) + Duration::days(d))
            .collect();
        let policy = Policy {
            keep_weekly: Some(4),
            ..Policy::default()
        };
        let p = utc_plan(entries(&times), &policy, at(2021, 1, 13, 0, 0));
        assert_eq!(
            kept_names(&p),
            [
                "2021-01-12T12:00",
                "2021-01-10T12:00",
                "2021-01-03T12:00",
                "2020-12-27T12:00",
            ]
        );
        assert_eq!(reasons_of(&p, "2021-01-12T12:00"), ["weekly 2021-W02"]);
        assert_eq!(reasons_of(&p, "2021-01-10T12:00"), ["weekly 2021-W01"]);
        // January 3rd 2021 belongs to ISO week 53 of 2020, so December 31st is not kept.
        assert_eq!(reasons_of(&p, "2021-01-03T12:00"), ["weekly 2020-W53"]);
        assert_eq!(reasons_of(&p, "2020-12-27T12:00"), ["weekly 2020-W52"]);
        assert!(deleted_names(&p).contains(&"2020-12-31T12:00"));
        assert_eq!(p.delete.len(), 24 - 4);
    }

    #[test]
    fn monthly_keeps_the_newest_of_each_month() {
        // Weekly backups (Sundays) for 20 weeks from 2025-11-02.
        let times: Vec<_> = (0..20)
            .map(|w| at(2025, 11, 2, 4, 0) + Duration::weeks(w))
            .collect();
        let policy = Policy {
            keep_monthly: Some(3),
            ..Policy::default()
        };
        let p = utc_plan(entries(&times), &policy, at(2026, 4, 1, 0, 0));
        // Last backup is 2026-03-15; newest of February is 02-22, of January 01-25.
        assert_eq!(
            kept_names(&p),
            ["2026-03-15T04:00", "2026-02-22T04:00", "2026-01-25T04:00"]
        );
        assert_eq!(reasons_of(&p, "2026-01-25T04:00"), ["monthly 2026-01"]);
        assert_eq!(p.delete.len(), 17);
    }

    #[test]
    fn yearly_keeps_the_newest_of_each_year() {
        let times = [
            at(2022, 6, 1, 0, 0),
            at(2022, 12, 31, 23, 59),
            at(2023, 1, 1, 0, 0),
            at(2023, 7, 1, 0, 0),
            at(2025, 2, 1, 0, 0),
            at(2025, 3, 1, 0, 0),
        ];
        let policy = Policy {
            keep_yearly: Some(3),
            ..Policy::default()
        };
        let p = utc_plan(entries(&times), &policy, at(2026, 1, 1, 0, 0));
        assert_eq!(
            kept_names(&p),
            ["2025-03-01T00:00", "2023-07-01T00:00", "2022-12-31T23:59"]
        );
        assert_eq!(
            deleted_names(&p),
            ["2025-02-01T00:00", "2023-01-01T00:00", "2022-06-01T00:00"]
        );
        assert_eq!(reasons_of(&p, "2022-12-31T23:59"), ["yearly 2022"]);
    }

    #[test]
    fn keep_within_boundary_is_inclusive() {
        let now = at(2026, 5, 10, 12, 0);
        let cutoff = now - Duration::hours(36);
        let list = vec![
            entry("inside", cutoff + Duration::seconds(1)),
            entry("boundary", cutoff),
            entry("outside", cutoff - Duration::seconds(1)),
        ];
        let policy = Policy {
            keep_within: Some("36h".into()),
            ..Policy::default()
        };
        let p = utc_plan(list, &policy, now);
        assert_eq!(kept_names(&p), ["inside", "boundary"]);
        assert_eq!(deleted_names(&p), ["outside"]);
        assert_eq!(reasons_of(&p, "boundary"), ["within 36h"]);
    }

    #[test]
    fn keep_within_calendar_months() {
        let now = at(2026, 3, 31, 0, 0);
        let list = entries(&[at(2026, 2, 28, 0, 0), at(2026, 2, 27, 23, 59)]);
        let policy = Policy {
            keep_within: Some("1m".into()),
            ..Policy::default()
        };
        let p = utc_plan(list, &policy, now);
        assert_eq!(kept_names(&p), ["2026-02-28T00:00"]);
        assert_eq!(deleted_names(&p), ["2026-02-27T23:59"]);
    }

    #[test]
    fn keep_last_zero_with_another_rule() {
        let times: Vec<_> = (0..4).map(|d| at(2026, 1, 1 + d, 0, 0)).collect();
        let policy = Policy {
            keep_last: Some(0),
            keep_daily: Some(2),
            ..Policy::default()
        };
        let p = utc_plan(entries(&times), &policy, at(2026, 2, 1, 0, 0));
        assert_eq!(kept_names(&p), ["2026-01-04T00:00", "2026-01-03T00:00"]);
        assert_eq!(reasons_of(&p, "2026-01-04T00:00"), ["daily 2026-01-04"]);
    }

    #[test]
    fn combined_rules_union_and_list_every_reason() {
        // Daily backups at 02:00 through 2026-03-20 since 2025-10-01.
        let start = at(2025, 10, 1, 2, 0);
        let times: Vec<_> = (0..171).map(|d| start + Duration::days(d)).collect();
        assert_eq!(times.last(), Some(&at(2026, 3, 20, 2, 0)));
        let policy = Policy {
            keep_last: Some(2),
            keep_daily: Some(3),
            keep_weekly: Some(2),
            keep_monthly: Some(3),
            keep_yearly: Some(2),
            keep_within: Some("2d".into()),
            ..Policy::default()
        };
        let p = utc_plan(entries(&times), &policy, at(2026, 3, 20, 12, 0));
        assert_eq!(
            kept_names(&p),
            [
                "2026-03-20T02:00", // last, daily, weekly (W12), monthly, yearly, within
                "2026-03-19T02:00", // last, daily, within
                "2026-03-18T02:00", // daily only: before the 2d cutoff (03-18 12:00)
                "2026-03-15T02:00", // weekly 2026-W11 (Sunday)
                "2026-02-28T02:00", // monthly 2026-02
                "2026-01-31T02:00", // monthly 2026-01
                "2025-12-31T02:00", // yearly 2025
            ]
        );
        assert_eq!(
            reasons_of(&p, "2026-03-20T02:00"),
            [
                "last",
                "daily 2026-03-20",
                "weekly 2026-W12",
                "monthly 2026-03",
                "yearly 2026",
                "within 2d"
            ]
        );
        assert_eq!(
            reasons_of(&p, "2026-03-19T02:00"),
            ["last", "daily 2026-03-19", "within 2d"]
        );
        assert_eq!(reasons_of(&p, "2026-03-18T02:00"), ["daily 2026-03-18"]);
        assert_eq!(reasons_of(&p, "2026-03-15T02:00"), ["weekly 2026-W11"]);
        assert_eq!(p.keep.len() + p.delete.len(), 171);
    }

    #[test]
    fn ties_are_broken_by_name_deterministically() {
        let t = at(2026, 4, 1, 0, 0);
        let names = ["db-b.gz", "db-a.gz", "db-c.gz"];
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let mut results = Vec::new();
        for rotation in 0..3 {
            let mut list: Vec<_> = names.iter().map(|n| entry(n, t)).collect();
            list.rotate_left(rotation);
            let p = utc_plan(list, &policy, at(2026, 5, 1, 0, 0));
            results.push((
                kept_names(&p)
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
                deleted_names(&p)
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            ));
        }
        for r in &results {
            assert_eq!(r.0, ["db-c.gz"]);
            assert_eq!(r.1, ["db-b.gz", "db-a.gz"]);
        }
        // Same for a calendar rule: one bucket, the greatest name wins.
        let policy = Policy {
            keep_daily: Some(1),
            ..Policy::default()
        };
        let list: Vec<_> = names.iter().map(|n| entry(n, t)).collect();
        let p = utc_plan(list, &policy, at(2026, 5, 1, 0, 0));
        assert_eq!(kept_names(&p), ["db-c.gz"]);
    }

    #[test]
    fn future_entries_are_kept_and_do_not_use_up_rules() {
        let now = at(2026, 6, 1, 12, 0);
        let list = vec![
            entry("skewed", now + Duration::days(365)),
            entry("soon", now + Duration::seconds(1)),
            entry("newest", now),
            entry("older", now - Duration::hours(1)),
        ];
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let p = utc_plan(list, &policy, now);
        assert_eq!(kept_names(&p), ["skewed", "soon", "newest"]);
        assert_eq!(reasons_of(&p, "skewed"), ["future"]);
        assert_eq!(reasons_of(&p, "soon"), ["future"]);
        assert_eq!(reasons_of(&p, "newest"), ["last"]);
        assert_eq!(deleted_names(&p), ["older"]);
    }

    // ---- buckets and time zones ----

    #[test]
    fn bucket_labels() {
        let t = at(2026, 11, 20, 14, 30);
        let z = Utc.fix();
        assert_eq!(bucket(t, z, Period::Hour), "2026-11-20 14h");
        assert_eq!(bucket(t, z, Period::Day), "2026-11-20");
        assert_eq!(bucket(t, z, Period::Week), "2026-W47");
        assert_eq!(bucket(t, z, Period::Month), "2026-11");
        assert_eq!(bucket(t, z, Period::Year), "2026");
        // 2024-12-30 is in ISO week 1 of 2025.
        assert_eq!(bucket(at(2024, 12, 30, 0, 0), z, Period::Week), "2025-W01");
    }

    #[test]
    fn buckets_follow_the_offset() {
        let t = at(2026, 12, 31, 23, 30); // UTC
        let plus2 = FixedOffset::east_opt(2 * 3600).unwrap();
        let minus5 = FixedOffset::west_opt(5 * 3600).unwrap();
        assert_eq!(bucket(t, plus2, Period::Day), "2027-01-01");
        assert_eq!(bucket(t, plus2, Period::Year), "2027");
        assert_eq!(bucket(t, plus2, Period::Hour), "2027-01-01 01h");
        assert_eq!(
            bucket(at(2027, 1, 1, 3, 0), minus5, Period::Day),
            "2026-12-31"
        );
        let half = FixedOffset::east_opt(5 * 3600 + 1800).unwrap(); // India
        assert_eq!(
            bucket(at(2026, 1, 1, 18, 29), half, Period::Day),
            "2026-01-01"
        );
        assert_eq!(
            bucket(at(2026, 1, 1, 18, 30), half, Period::Day),
            "2026-01-02"
        );
    }

    #[test]
    fn local_day_buckets_differ_from_utc_ones() {
        // 22:00 and 23:30 UTC on Jan 1 are both Jan 2 in UTC+3; 20:00 UTC is still Jan 1 there.
        let times = [
            at(2026, 1, 1, 20, 0),
            at(2026, 1, 1, 22, 0),
            at(2026, 1, 1, 23, 30),
        ];
        let policy = Policy {
            keep_daily: Some(5),
            ..Policy::default()
        };
        let now = at(2026, 1, 3, 0, 0);
        let in_utc = utc_plan(entries(&times), &policy, now);
        assert_eq!(kept_names(&in_utc), ["2026-01-01T23:30"]);
        let plus3 = FixedOffset::east_opt(3 * 3600).unwrap();
        let local = plan_with_offsets(entries(&times), &policy, now, |_| plus3).unwrap();
        assert_eq!(kept_names(&local), ["2026-01-01T23:30", "2026-01-01T20:00"]);
        assert_eq!(reasons_of(&local, "2026-01-01T23:30"), ["daily 2026-01-02"]);
        assert_eq!(reasons_of(&local, "2026-01-01T20:00"), ["daily 2026-01-01"]);
    }

    #[test]
    fn local_buckets_use_the_offset_in_force_at_each_backup() {
        // A DST-like zone: UTC+1 before 2026-03-29 01:00 UTC, UTC+2 after.
        let switch = at(2026, 3, 29, 1, 0);
        let zone = |t: DateTime<Utc>| {
            let hours = if t < switch { 1 } else { 2 };
            FixedOffset::east_opt(hours * 3600).unwrap()
        };
        // 22:30 UTC on 03-29 is 00:30 on 03-30 in summer time, but 23:30 on 03-29 in winter.
        let times = [at(2026, 3, 29, 21, 30), at(2026, 3, 29, 22, 30)];
        let policy = Policy {
            keep_daily: Some(5),
            ..Policy::default()
        };
        let p = plan_with_offsets(entries(&times), &policy, at(2026, 4, 1, 0, 0), zone).unwrap();
        assert_eq!(reasons_of(&p, "2026-03-29T22:30"), ["daily 2026-03-30"]);
        assert_eq!(reasons_of(&p, "2026-03-29T21:30"), ["daily 2026-03-29"]);
    }

    #[test]
    fn local_plan_uses_the_machine_offset_at_each_time() {
        // Independent of the machine's zone: plan(utc=false) must equal plan_with_offsets
        // using whatever chrono reports as the local offset at each time.
        let times: Vec<_> = (0..60)
            .map(|h| at(2026, 3, 27, 0, 17) + Duration::hours(h * 3))
            .collect();
        let policy = Policy {
            keep_hourly: Some(10),
            keep_daily: Some(4),
            ..Policy::default()
        };
        let now = at(2026, 4, 10, 0, 0);
        let local = plan(entries(&times), &policy, now, false).unwrap();
        let manual = plan_with_offsets(entries(&times), &policy, now, |t| {
            t.with_timezone(&Local).offset().fix()
        })
        .unwrap();
        assert_eq!(local, manual);
        let utc = plan_with_offsets(entries(&times), &policy, now, |_| Utc.fix()).unwrap();
        assert_eq!(utc_plan(entries(&times), &policy, now), utc);
    }
}
