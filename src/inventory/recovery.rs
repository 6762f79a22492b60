//! Recovery eligibility: why an inactive mailbox cannot be recovered now, by Microsoft's
//! documented rules.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::age_days;

/// Why a mailbox cannot be recovered now: a stable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    pub code: String,
    pub message: String,
}

/// How many days after its soft deletion an inactive mailbox can be recovered.
pub const RECOVERY_MIN_AGE_DAYS: i64 = 30;

/// Whether no rule of [`recovery_blockers`] blocks recovery, without writing the
/// sentences: what the summaries count for every cached mailbox. `old_enough` is
/// whether the mailbox was soft-deleted at least [`RECOVERY_MIN_AGE_DAYS`] ago (`false`
/// when the date is unknown).
pub fn recovery_eligible(
    is_inactive: Option<bool>,
    auto_expanding_archive: bool,
    external_directory_object_id: Option<&str>,
    old_enough: bool,
) -> bool {
    is_inactive != Some(false)
        && !auto_expanding_archive
        && old_enough
        && external_directory_object_id.is_none_or(|s| s.trim().is_empty())
}

/// Recovery eligibility of an inactive mailbox (`New-Mailbox -InactiveMailbox`).
///
/// Rules, from Microsoft's Purview documentation ("Recover an inactive mailbox", "Restore
/// an inactive mailbox", "Learn about inactive mailboxes"); each is a blocker:
/// - `not_inactive`: IsInactiveMailbox is false; the mailbox is no longer inactive
///   (its holds were removed) and is on its way to being purged.
/// - `auto_expanding_archive`: "You can't recover or restore an inactive mailbox that's
///   configured with an auto-expanding archive."
/// - `soft_deleted_under_30_days`: "If an inactive mailbox was soft-deleted less than 30
///   days ago, you can't use the New-Mailbox -InactiveMailbox command to recover it":
///   restore the user account in Entra ID instead.
/// - `directory_user_present`: ExternalDirectoryObjectId is set, which the same page gives
///   as the sign that the soft-deleted retention period has not expired.
/// - `soft_delete_date_unknown`: without WhenSoftDeleted the 30-day rule cannot be checked.
pub fn recovery_blockers(
    is_inactive: Option<bool>,
    auto_expanding_archive: bool,
    external_directory_object_id: Option<&str>,
    when_soft_deleted: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<Blocker> {
    let mut b = Vec::new();
    let mut push = |code: &str, message: String| {
        b.push(Blocker {
            code: code.to_string(),
            message,
        })
    };
    if is_inactive == Some(false) {
        push(
            "not_inactive",
            "the mailbox is no longer inactive: its holds were removed and it will be purged"
                .into(),
        );
    }
    if auto_expanding_archive {
        push(
            "auto_expanding_archive",
            "an inactive mailbox with an auto-expanding archive can't be recovered or restored; export its content with a Content search instead".into(),
        );
    }
    match when_soft_deleted {
        Some(d) if age_days(d, now) < RECOVERY_MIN_AGE_DAYS => push(
            "soft_deleted_under_30_days",
            format!(
                "soft-deleted {} days ago: within 30 days, restore the user account in Entra ID instead of recovering the mailbox",
                age_days(d, now)
            ),
        ),
        Some(_) => {}
        None => push(
            "soft_delete_date_unknown",
            "WhenSoftDeleted is unknown, so the 30-day rule cannot be checked".into(),
        ),
    }
    if external_directory_object_id.is_some_and(|s| !s.trim().is_empty()) {
        push(
            "directory_user_present",
            "ExternalDirectoryObjectId is still set: the soft-deleted retention period has not expired, restore the user account instead".into(),
        );
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::dt;

    #[test]
    fn eligibility_rules() {
        let now = dt("2025-03-01T00:00:00Z");
        let old = Some(dt("2024-01-01T00:00:00Z"));
        let codes = |b: Vec<Blocker>| b.into_iter().map(|b| b.code).collect::<Vec<_>>();
        assert!(recovery_blockers(Some(true), false, None, old, now).is_empty());
        assert!(recovery_blockers(None, false, Some(""), old, now).is_empty());
        assert_eq!(
            codes(recovery_blockers(Some(false), true, None, old, now)),
            ["not_inactive", "auto_expanding_archive"]
        );
        assert_eq!(
            codes(recovery_blockers(
                Some(true),
                false,
                None,
                Some(dt("2025-02-10T00:00:00Z")),
                now
            )),
            ["soft_deleted_under_30_days"]
        );
        assert_eq!(
            codes(recovery_blockers(Some(true), false, None, None, now)),
            ["soft_delete_date_unknown"]
        );
        assert_eq!(
            codes(recovery_blockers(Some(true), false, Some("0e1f"), old, now)),
            ["directory_user_present"]
        );
    }

    #[test]
    fn eligible_exactly_when_nothing_blocks() {
        let now = dt("2025-03-01T12:00:00Z");
        let dates = [
            None,
            Some(dt("2025-03-01T12:00:00Z")),
            Some(dt("2025-01-30T12:00:00.001Z")),
            Some(dt("2025-01-30T12:00:00Z")),
            Some(dt("2024-01-01T00:00:00Z")),
            Some(dt("2026-01-01T00:00:00Z")),
        ];
        for inactive in [None, Some(true), Some(false)] {
            for expanding in [false, true] {
                for id in [None, Some(""), Some(" \u{a0}\t"), Some("0e1f")] {
                    for d in dates {
                        let old_enough =
                            d.is_some_and(|d| age_days(d, now) >= RECOVERY_MIN_AGE_DAYS);
                        assert_eq!(
                            recovery_eligible(inactive, expanding, id, old_enough),
                            recovery_blockers(inactive, expanding, id, d, now).is_empty(),
                            "{inactive:?} {expanding} {id:?} {d:?}"
                        );
                    }
                }
            }
        }
    }
}
