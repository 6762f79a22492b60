//! Holds: the hold types an inactive mailbox carries, read from its flags and its
//! InPlaceHolds entries as Microsoft's "identify the type of hold" guidance describes.

use serde::{Deserialize, Serialize};

/// A hold on an inactive mailbox, by stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldType {
    /// LitigationHoldEnabled.
    Litigation,
    /// InPlaceHolds `UniH…`: an eDiscovery case hold.
    Ediscovery,
    /// InPlaceHolds `mbx…`: a Microsoft 365 retention policy applied to the mailbox.
    RetentionPolicy,
    /// InPlaceHolds `skp…`: a retention policy for Skype for Business conversations.
    SkypeRetention,
    /// InPlaceHolds `grp…`: a retention policy for Microsoft 365 groups.
    GroupRetention,
    /// InPlaceHolds bare GUID: a legacy In-Place Hold.
    LegacyInPlace,
    /// ComplianceTagHoldApplied: a retention label.
    RetentionLabel,
    /// DelayHoldApplied.
    Delay,
    /// DelayReleaseHoldApplied.
    DelayRelease,
    /// An InPlaceHolds entry of a form not documented above.
    Other,
}

impl HoldType {
    pub const ALL: [HoldType; 10] = [
        HoldType::Litigation,
        HoldType::Ediscovery,
        HoldType::RetentionPolicy,
        HoldType::SkypeRetention,
        HoldType::GroupRetention,
        HoldType::LegacyInPlace,
        HoldType::RetentionLabel,
        HoldType::Delay,
        HoldType::DelayRelease,
        HoldType::Other,
    ];

    /// The stable name stored in `hold_types` and accepted by `--hold`.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldType::Litigation => "litigation",
            HoldType::Ediscovery => "ediscovery",
            HoldType::RetentionPolicy => "retention_policy",
            HoldType::SkypeRetention => "skype_retention",
            HoldType::GroupRetention => "group_retention",
            HoldType::LegacyInPlace => "legacy_in_place",
            HoldType::RetentionLabel => "retention_label",
            HoldType::Delay => "delay",
            HoldType::DelayRelease => "delay_release",
            HoldType::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<HoldType> {
        HoldType::ALL
            .into_iter()
            .find(|h| h.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// Classifies one InPlaceHolds entry following Microsoft's "identify the type of hold"
/// guidance; `None` for `-mbx…`, an exclusion from an org-wide policy, which is no hold.
pub fn classify_in_place_hold(entry: &str) -> Option<HoldType> {
    let e = entry.trim();
    let starts = |p: &str| {
        e.as_bytes()
            .get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
    };
    if e.is_empty() || starts("-mbx") {
        None
    } else if starts("UniH") {
        Some(HoldType::Ediscovery)
    } else if starts("mbx") {
        Some(HoldType::RetentionPolicy)
    } else if starts("skp") {
        Some(HoldType::SkypeRetention)
    } else if starts("grp") {
        Some(HoldType::GroupRetention)
    } else if is_bare_guid(e) {
        Some(HoldType::LegacyInPlace)
    } else {
        Some(HoldType::Other)
    }
}

fn is_bare_guid(s: &str) -> bool {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    hex.len() == 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && (s.len() == 32 || s.len() == 36)
}

/// The hold types that apply, deduplicated and in a stable order.
pub fn hold_types(
    litigation: bool,
    in_place_holds: &[String],
    compliance_tag: bool,
    delay: bool,
    delay_release: bool,
) -> Vec<HoldType> {
    let mut v: Vec<HoldType> = in_place_holds
        .iter()
        .filter_map(|e| classify_in_place_hold(e))
        .collect();
    for (on, h) in [
        (litigation, HoldType::Litigation),
        (compliance_tag, HoldType::RetentionLabel),
        (delay, HoldType::Delay),
        (delay_release, HoldType::DelayRelease),
    ] {
        if on {
            v.push(h);
        }
    }
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_hold_prefix() {
        let g = "4a3b2c1d5e6f47a8b9c0d1e2f3a4b5c6";
        let cases = [
            (format!("UniH{g}"), Some(HoldType::Ediscovery)),
            (format!("unih{g}"), Some(HoldType::Ediscovery)),
            (format!("mbx{g}:1"), Some(HoldType::RetentionPolicy)),
            ("größe".to_string(), Some(HoldType::Other)),
            ("m".to_string(), Some(HoldType::Other)),
            (format!("skp{g}:3"), Some(HoldType::SkypeRetention)),
            (format!("grp{g}:2"), Some(HoldType::GroupRetention)),
            (format!("-mbx{g}:1"), None),
            (g.to_string(), Some(HoldType::LegacyInPlace)),
            (
                "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6".to_string(),
                Some(HoldType::LegacyInPlace),
            ),
            ("cld12345".to_string(), Some(HoldType::Other)),
            (String::new(), None),
        ];
        for (entry, want) in cases {
            assert_eq!(classify_in_place_hold(&entry), want, "{entry}");
        }
    }

    #[test]
    fn flags_become_holds_and_exclusions_do_not() {
        let holds = hold_types(
            true,
            &["-mbxabc:1".into(), "UniHx".into(), "UniHy".into()],
            true,
            true,
            true,
        );
        assert_eq!(
            holds,
            vec![
                HoldType::Litigation,
                HoldType::Ediscovery,
                HoldType::RetentionLabel,
                HoldType::Delay,
                HoldType::DelayRelease
            ]
        );
        assert!(hold_types(false, &["-mbxabc:1".into()], false, false, false).is_empty());
        for h in HoldType::ALL {
            assert_eq!(HoldType::parse(h.as_str()), Some(h));
            assert_eq!(serde_json::to_value(h).unwrap(), json!(h.as_str()));
        }
    }
}
