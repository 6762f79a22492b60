//! Summaries of the inventory (`mailboxes stats`): totals by company, hold type and age
//! band, and the licences missing from the price table.

use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::InactiveMailbox;
use super::{HoldType, price_of};
use crate::config::InventoryConfig;

/// Counts and costs of one group in a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub key: String,
    pub count: u64,
    pub monthly_cost: f64,
    pub size_mb: f64,
}

/// Totals of the inventory by company, hold type and age band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub recovery_eligible: u64,
    pub monthly_cost: f64,
    pub size_mb: f64,
    pub by_company: Vec<Group>,
    /// A mailbox counts once under each of its hold types (`none` when it has none).
    pub by_hold_type: Vec<Group>,
    pub by_age_band: Vec<Group>,
    /// License types missing from the price table, priced 0.
    pub unpriced_licenses: Vec<Group>,
    pub without_license: u64,
    /// Mailboxes whose size is not known yet (the live sync has not fetched their
    /// statistics): they count as 0 MB in the sizes above.
    pub size_unknown: u64,
}

/// Age bands of `mailboxes stats`, as (label, first day, last day).
pub const AGE_BANDS: &[(&str, i64, i64)] = &[
    ("0-29 days", 0, 29),
    ("30-89 days", 30, 89),
    ("90-179 days", 90, 179),
    ("180-364 days", 180, 364),
    ("1-2 years", 365, 729),
    ("2+ years", 730, i64::MAX),
];

/// The age band label of an age in days.
pub fn age_band(days: Option<i64>) -> &'static str {
    days.and_then(|d| {
        AGE_BANDS
            .iter()
            .find(|(_, lo, hi)| (*lo..=*hi).contains(&d))
    })
    .map_or("unknown", |(label, _, _)| label)
}

/// The mailboxes that share everything the summary groups them by, as one pass over the
/// cache counts them ([`crate::store::Store::mailbox_tallies`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub company: Option<String>,
    pub license: Option<String>,
    /// Their hold types, as [`InactiveMailbox::hold_types`] has them.
    pub holds: Vec<HoldType>,
    /// Their [`age_band`] label.
    pub age_band: &'static str,
    pub count: u64,
    /// How many of them can be recovered now.
    pub recovery_eligible: u64,
    /// Their sizes added up, unknown sizes as 0.
    pub size_mb: f64,
    /// How many of them have no size yet.
    pub size_unknown: u64,
}

#[cfg(test)]
impl Tally {
    /// One refreshed mailbox as a tally of one: the per-mailbox rules the cache's pass
    /// must agree with.
    pub fn of(m: &InactiveMailbox) -> Tally {
        Tally {
            company: m.operating_company.clone(),
            license: m.license_type.clone(),
            holds: m.hold_types.clone(),
            age_band: age_band(m.age_days),
            count: 1,
            recovery_eligible: u64::from(m.recovery_eligible),
            size_mb: m.size_mb.unwrap_or(0.0),
            size_unknown: u64::from(m.size_mb.is_none()),
        }
    }
}

/// Sums tallies into a [`Summary`], pricing each group's licence from the price table.
pub fn summarize(tallies: impl IntoIterator<Item = Tally>, cfg: &InventoryConfig) -> Summary {
    use std::collections::BTreeMap;
    fn add(map: &mut BTreeMap<String, Group>, key: &str, t: &Tally, cost: f64) {
        // Most tallies fall in a group already there: no key is made to own for them.
        if let Some(g) = map.get_mut(key) {
            g.count += t.count;
            g.monthly_cost += cost;
            g.size_mb += t.size_mb;
            return;
        }
        map.insert(
            key.to_string(),
            Group {
                key: key.to_string(),
                count: t.count,
                monthly_cost: cost,
                size_mb: t.size_mb,
            },
        );
    }
    let (mut company, mut hold, mut band, mut unpriced) = Default::default();
    let mut s = Summary {
        count: 0,
        recovery_eligible: 0,
        monthly_cost: 0.0,
        size_mb: 0.0,
        by_company: Vec::new(),
        by_hold_type: Vec::new(),
        by_age_band: Vec::new(),
        unpriced_licenses: Vec::new(),
        without_license: 0,
        size_unknown: 0,
    };
    for t in tallies {
        let price = t.license.as_deref().and_then(|l| price_of(cfg, l));
        let cost = price.unwrap_or(0.0) * t.count as f64;
        s.count += t.count;
        s.recovery_eligible += t.recovery_eligible;
        s.monthly_cost += cost;
        s.size_mb += t.size_mb;
        s.size_unknown += t.size_unknown;
        add(
            &mut company,
            t.company.as_deref().unwrap_or("(none)"),
            &t,
            cost,
        );
        if t.holds.is_empty() {
            add(&mut hold, "none", &t, cost);
        }
        for h in &t.holds {
            add(&mut hold, h.as_str(), &t, cost);
        }
        add(&mut band, t.age_band, &t, cost);
        match t.license.as_deref() {
            None => s.without_license += t.count,
            Some(l) if price.is_none() => add(&mut unpriced, l, &t, cost),
            Some(_) => {}
        }
    }
    let by_cost = |map: BTreeMap<String, Group>| {
        let mut v: Vec<Group> = map.into_values().collect();
        v.sort_by(|a, b| {
            b.monthly_cost
                .total_cmp(&a.monthly_cost)
                .then(b.count.cmp(&a.count))
        });
        v
    };
    s.by_company = by_cost(company);
    s.by_hold_type = by_cost(hold);
    s.unpriced_licenses = by_cost(unpriced);
    let mut band: BTreeMap<String, Group> = band;
    s.by_age_band = AGE_BANDS
        .iter()
        .map(|(l, _, _)| *l)
        .chain(["unknown"])
        .filter_map(|l| band.remove(l))
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::ExoMailbox;
    use crate::inventory::tests::{cfg, dt};
    use serde_json::json;

    #[test]
    fn summary_groups_and_unpriced() {
        let c = cfg();
        let now = dt("2025-06-01T00:00:00Z");
        let mk = |guid: &str, lic: &str, deleted: &str, holds: &str, company: &str| {
            let rec = json!({"ExchangeGuid": guid, "LicenseType": lic, "WhenSoftDeleted": deleted,
                             "InPlaceHolds": holds, "CustomAttribute1": company,
                             "TotalItemSize": "1 MB (1,048,576 bytes)"});
            InactiveMailbox::build(
                ExoMailbox::from_fields(&c, |k| rec.get(k)).unwrap(),
                &c,
                now,
            )
        };
        let ms = [
            mk(
                "11111111-1111-4111-8111-111111111111",
                "E5",
                "2025-05-20T00:00:00Z",
                "UniHa",
                "A",
            ),
            mk(
                "22222222-2222-4222-8222-222222222222",
                "E3",
                "2024-01-01T00:00:00Z",
                "UniHa mbxb",
                "A",
            ),
            mk(
                "33333333-3333-4333-8333-333333333333",
                "Kiosk",
                "2022-01-01T00:00:00Z",
                "",
                "B",
            ),
        ];
        let s = summarize(ms.iter().map(Tally::of), &c);
        assert_eq!(s.count, 3);
        assert_eq!(s.recovery_eligible, 2);
        assert_eq!(s.monthly_cost, 93.0);
        assert_eq!(s.size_mb, 3.0);
        assert_eq!(s.by_company[0].key, "A");
        assert_eq!(s.by_company[0].monthly_cost, 93.0);
        let hold = |k: &str| s.by_hold_type.iter().find(|g| g.key == k).unwrap().count;
        assert_eq!(
            (hold("ediscovery"), hold("retention_policy"), hold("none")),
            (2, 1, 1)
        );
        let bands: Vec<_> = s
            .by_age_band
            .iter()
            .map(|g| (g.key.as_str(), g.count))
            .collect();
        assert_eq!(bands, [("0-29 days", 1), ("1-2 years", 1), ("2+ years", 1)]);
        assert_eq!(s.unpriced_licenses.len(), 1);
        assert_eq!(s.unpriced_licenses[0].key, "Kiosk");
        assert_eq!(age_band(None), "unknown");
        assert_eq!(age_band(Some(30)), "30-89 days");
    }
}
