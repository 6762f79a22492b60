//! The live sync of inactive mailboxes from Exchange Online.
//!
//! A listing (`Get-Mailbox -InactiveMailboxOnly`) is streamed page by page into the
//! store's staging table, so memory is bounded by a page, not the tenant. A listing that
//! completes becomes the cache in one transaction ([`crate::store::Tx::apply_snapshot`]):
//! new and changed mailboxes written, absent ones removed, each change in the change
//! history and the audit log. A listing that fails part-way changes nothing.
//!
//! Statistics (size, item count) take one `Get-MailboxStatistics` call per mailbox, so
//! they are fetched apart from the listing, every cycle, for a bounded number of the
//! mailboxes that need them (new ones, changed ones, and the oldest figures), with a few
//! calls in flight (halved while Exchange throttles), committed in batches as they
//! arrive: a killed sync keeps what it fetched.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{Exchange, ExchangeError, PageEvent, Policy};
use crate::audit::{AuditEvent, Operation};
use crate::auth::{Resource, Session};
use crate::config::{Config, EXPORT_ONLY_LICENSE_ATTRIBUTE};
use crate::error::Classify as _;
use crate::inventory::{ExoMailbox, FIELDS, InactiveMailbox, STATISTICS_FIELDS};
use crate::store::{Snapshot, StatisticsResult, Store, SyncRun};

/// Statistics are committed at least this often while they arrive.
const COMMIT_EVERY: usize = 200;
const COMMIT_AFTER: Duration = Duration::from_secs(1);

/// What a sync is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Listing,
    Applying,
    Statistics,
}

/// A sync in progress, as `status` and the progress bar show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub started_at: String,
    pub pages: u32,
    pub mailboxes_seen: u64,
    pub restarts: u32,
    pub statistics_done: u64,
    pub statistics_target: u64,
    pub throttled_waits: u64,
}

/// Where a running sync publishes its progress.
pub type ProgressSlot = Arc<Mutex<Option<Progress>>>;

fn publish(slot: &ProgressSlot, f: impl FnOnce(&mut Progress)) {
    if let Some(p) = slot.lock().expect("not poisoned").as_mut() {
        f(p);
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// The listing ran (and completed: a failed one is an error).
    pub listed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    pub pages: u32,
    pub restarts: u32,
    pub statistics_fetched: u64,
    /// Mailboxes Exchange no longer knew when their statistics were asked for.
    pub statistics_missing: u64,
    /// Mailboxes whose statistics call failed for that mailbox alone: set aside until
    /// their figures are due again.
    pub statistics_failed: u64,
    /// What stopped the statistics early, if something did: when it needs a person (a
    /// sign-in, a role), the sync step says so.
    pub statistics_kind: Option<crate::error::Kind>,
    /// Why the statistics stopped early, if they did; they go on next cycle.
    pub statistics_error: Option<String>,
    /// Mailboxes still needing statistics after this run.
    pub statistics_due: u64,
    pub requests: u64,
    pub throttled_waits: u64,
    pub waited_ms: u64,
    pub duration_ms: u64,
}

impl Outcome {
    /// One line for people.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.snapshot {
            parts.push(format!(
                "listed {} inactive mailbox(es) in {} page(s): {} added, {} removed, {} changed",
                s.listed, self.pages, s.added, s.removed, s.changed
            ));
        }
        if self.statistics_fetched + self.statistics_missing > 0 || self.statistics_due > 0 {
            parts.push(format!(
                "statistics fetched for {}, {} still due",
                self.statistics_fetched, self.statistics_due
            ));
        }
        if let Some(e) = &self.statistics_error {
            parts.push(format!("statistics stopped: {e}"));
        }
        if self.throttled_waits > 0 {
            parts.push(format!(
                "{} throttled wait(s), {} s",
                self.throttled_waits,
                self.waited_ms / 1000
            ));
        }
        if parts.is_empty() {
            "nothing to do".into()
        } else {
            parts.join("; ")
        }
    }

    fn figures(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("outcomes serialize");
        if let Some(map) = v.as_object_mut()
            && let Some(Value::Object(snap)) = map.remove("snapshot")
        {
            for k in ["listed", "added", "removed", "changed"] {
                if let Some(x) = snap.get(k) {
                    map.insert(k.into(), x.clone());
                }
            }
            let released = snap
                .get("holds_released")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            map.insert("holds_released".into(), released.into());
            map.remove("listed");
            map.insert(
                "mailboxes".into(),
                snap.get("listed").cloned().unwrap_or(Value::Null),
            );
        }
        v
    }
}

/// What a run needs.
pub struct Run<'a> {
    pub config: &'a Config,
    pub session: &'a Session,
    pub store: &'a RefCell<Store>,
    pub cancel: &'a CancellationToken,
    pub progress: &'a ProgressSlot,
    /// The person said this sync's removals are real (`sync --allow-removals`).
    pub allow_removals: bool,
}

/// The Get-Mailbox properties a listing asks for: the inventory's and the configured
/// attributes (not `LicenseType`, which only exports have).
pub fn select(config: &Config) -> Vec<String> {
    let inv = &config.inventory;
    let mut names: Vec<String> = FIELDS
        .iter()
        .filter(|f| !STATISTICS_FIELDS.contains(f))
        .map(|f| f.to_string())
        .collect();
    let license = (!inv
        .license_attribute
        .as_str()
        .eq_ignore_ascii_case(EXPORT_ONLY_LICENSE_ATTRIBUTE))
    .then_some(&inv.license_attribute);
    for a in [
        inv.company_attribute.as_ref(),
        inv.department_attribute.as_ref(),
        license,
    ]
    .into_iter()
    .flatten()
    {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(a.as_str())) {
            names.push(a.as_str().to_string());
        }
    }
    names
}

/// The `tid` claim of an access token, read without checking the signature (the token
/// came from our own sign-in; only its tenant is wanted).
fn token_tenant(token: &secrecy::SecretString) -> Option<String> {
    let payload = token.expose_secret().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let tid = claims.get("tid")?.as_str()?;
    uuid::Uuid::try_parse(tid)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// The tenant GUID for the endpoint's path and the `X-AnchorMailbox` of the listing: the
/// sign-in's tenant (id token, else access token `tid`), else the configured tenant; the
/// signed-in admin's UPN, else the tenant's system mailbox.
async fn tenant_and_anchor(run: &Run<'_>) -> Result<(String, String), ExchangeError> {
    let account = run.session.record().await.and_then(|r| r.account);
    let guid = |s: &str| {
        uuid::Uuid::try_parse(s)
            .ok()
            .map(|u| u.hyphenated().to_string())
    };
    let mut tenant = account
        .as_ref()
        .and_then(|a| a.tenant_id.as_deref())
        .and_then(guid);
    if tenant.is_none() {
        let access = run
            .session
            .access_token(Resource::Exchange, Utc::now())
            .await?;
        tenant = token_tenant(&access.token);
    }
    let tenant = tenant
        .or_else(|| run.config.tenant.as_ref().map(|t| t.as_str().to_string()))
        .ok_or_else(|| {
            ExchangeError::Setup(
                "neither the sign-in nor the configuration names the tenant: set `tenant` to the tenant's GUID".into(),
            )
        })?;
    let anchor = match account.and_then(|a| a.username).filter(|u| u.contains('@')) {
        Some(upn) => format!("UPN:{upn}"),
        None => format!("APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant}"),
    };
    Ok((tenant, anchor))
}

/// The raw facts of one listed record; keys holding `@` (`ExchangeGuid@data.type`) are
/// sidecars and ignored.
pub fn parse_record(
    config: &Config,
    record: &Map<String, Value>,
) -> Result<ExoMailbox, crate::inventory::FieldError> {
    ExoMailbox::from_fields(&config.inventory, |name| {
        record
            .iter()
            .find(|(k, _)| k.len() == name.len() && k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    })
}

/// Runs one sync: the listing when `list` (the sync is due), then a batch of the
/// statistics due. The listing's failure is the run's; the statistics' is reported in
/// [`Outcome::statistics_error`] (what was fetched is kept, the rest waits for the next
/// cycle).
pub async fn run(r: &Run<'_>, list: bool) -> Result<Outcome, ExchangeError> {
    let started = Utc::now();
    let clock = Instant::now();
    *r.progress.lock().expect("not poisoned") = Some(Progress {
        phase: if list {
            Phase::Listing
        } else {
            Phase::Statistics
        },
        started_at: crate::time::stamp(started),
        pages: 0,
        mailboxes_seen: 0,
        restarts: 0,
        statistics_done: 0,
        statistics_target: 0,
        throttled_waits: 0,
    });
    let bulk = r.store.borrow_mut().begin_bulk();
    let result = match bulk {
        Ok(()) => run_inner(r, list, started, clock).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = r.store.borrow_mut().end_bulk() {
        tracing::warn!(
            "cannot restore the database connection's settings after the sync: {}",
            crate::error::chain(&e)
        );
    }
    *r.progress.lock().expect("not poisoned") = None;
    result
}

async fn run_inner(
    r: &Run<'_>,
    list: bool,
    started: DateTime<Utc>,
    clock: Instant,
) -> Result<Outcome, ExchangeError> {
    let cfg = &r.config.sync;
    let mut out = Outcome::default();
    let (tenant, anchor) = match tenant_and_anchor(r).await {
        Ok(t) => t,
        Err(e) => {
            if list {
                record_failure(r, started, clock, &out, &e);
            }
            return Err(e);
        }
    };
    let client = Exchange::new(
        r.session.http().clone(),
        &r.config.exchange_url(),
        &tenant,
        anchor,
        r.session,
        cfg.page_size.get(),
        cfg.concurrency.get() as usize,
        Policy::from_config(cfg),
        r.cancel,
    )?;
    let progress = r.progress.clone();
    client.on_wait(move |c| publish(&progress, |p| p.throttled_waits = c.waits));

    let mut sync_id = None;
    if list {
        match listing(r, &client, started).await {
            Ok((listing, snapshot)) => {
                out.listed = true;
                out.pages = listing.pages;
                out.restarts = listing.restarts;
                sync_id = Some(snapshot.sync_id);
                let released = snapshot.holds_released.clone();
                out.snapshot = Some(snapshot);
                if !released.is_empty() {
                    notify_released(r, &released).await;
                }
            }
            Err(e) => {
                let c = client.counters();
                out.requests = c.requests;
                out.throttled_waits = c.waits;
                out.waited_ms = c.waited.as_millis() as u64;
                if !matches!(e, ExchangeError::Cancelled) {
                    record_failure(r, started, clock, &out, &e);
                }
                return Err(e);
            }
        }
    }

    let cutoff =
        started - chrono::Duration::from_std(cfg.statistics_max_age.get()).unwrap_or_default();
    let per_cycle = cfg.statistics_per_cycle.get() as usize;
    if per_cycle > 0 && !r.cancel.is_cancelled() {
        statistics(r, &client, cutoff, per_cycle, &mut out).await?;
    }
    if !out.listed && r.cancel.is_cancelled() && out.statistics_fetched == 0 {
        return Err(ExchangeError::Cancelled);
    }
    out.statistics_due = r.store.borrow().statistics_due_count(cutoff)?.total();
    let c = client.counters();
    out.requests = c.requests;
    out.throttled_waits = c.waits;
    out.waited_ms = c.waited.as_millis() as u64;
    out.duration_ms = clock.elapsed().as_millis() as u64;
    if out.listed
        || out.statistics_fetched + out.statistics_missing > 0
        || out.statistics_error.is_some()
    {
        let figures = out.figures();
        let now = Utc::now();
        r.store.borrow_mut().write(|tx| {
            if let Some(id) = sync_id {
                tx.update_sync(
                    id,
                    &SyncRun {
                        source: "exchange",
                        started_at: started,
                        finished_at: now,
                        ok: true,
                        figures: &figures,
                        error: out.statistics_error.as_deref(),
                    },
                )?;
            }
            let mut details = json!({"source": "exchange", "listing": out.listed});
            if let (Value::Object(d), Value::Object(f)) = (&mut details, figures.clone()) {
                d.extend(f);
            }
            tx.audit(
                &AuditEvent::new(Operation::SyncMailboxes).details(details),
                now,
            )
            .map(|_| ())
        })?;
    }
    Ok(out)
}

/// Lists the tenant into the staging table and applies it as the cache's snapshot.
async fn listing(
    r: &Run<'_>,
    client: &Exchange<'_>,
    started: DateTime<Utc>,
) -> Result<(super::Listing, Snapshot), ExchangeError> {
    let select = select(r.config);
    r.store.borrow_mut().stage_reset()?;
    let listed = client
        .list_inactive_mailboxes(&select, |event| match event {
            PageEvent::Restart => {
                r.store.borrow_mut().stage_reset()?;
                publish(r.progress, |p| {
                    p.restarts += 1;
                    p.pages = 0;
                    p.mailboxes_seen = 0;
                });
                Ok(())
            }
            PageEvent::Page { number, records } => {
                let mut built = Vec::with_capacity(records.len());
                for (i, rec) in records.iter().enumerate() {
                    let raw =
                        parse_record(r.config, rec).map_err(|source| ExchangeError::Record {
                            page: number,
                            record: i + 1,
                            source,
                        })?;
                    let when_changed = raw.when_changed;
                    built.push((
                        InactiveMailbox::build(raw, &r.config.inventory, started),
                        when_changed,
                    ));
                }
                drop(records);
                let staged: Vec<crate::store::Staged<'_>> = built
                    .iter()
                    .map(|(m, w)| crate::store::Staged {
                        mailbox: m,
                        when_changed: *w,
                    })
                    .collect();
                r.store.borrow_mut().stage_page(&staged)?;
                publish(r.progress, |p| {
                    p.pages = number;
                    p.mailboxes_seen += built.len() as u64;
                });
                Ok(())
            }
        })
        .await;
    let listing = match listed {
        Ok(l) => l,
        Err(e) => {
            let _ = r.store.borrow_mut().stage_drop();
            return Err(e);
        }
    };
    publish(r.progress, |p| p.phase = Phase::Applying);
    let now = Utc::now();
    let figures = json!({"pages": listing.pages, "restarts": listing.restarts});
    let applied = r.store.borrow_mut().write(|tx| {
        let id = tx.record_sync(&SyncRun {
            source: "exchange",
            started_at: started,
            finished_at: now,
            ok: true,
            figures: &figures,
            error: None,
        })?;
        let (absent, cached) = tx.stage_absent_count()?;
        crate::inventory::RemovalGuard::from_config(r.config, r.allow_removals)
            .check(absent, cached)?;
        let snapshot = tx.apply_snapshot(id, now)?;
        // When no `stats` tallies are kept (a first sync sets them aside), counted now.
        tx.keep_tallies_counted_now(now, &r.config.inventory)?;
        let figures = json!({
            "pages": listing.pages,
            "restarts": listing.restarts,
            "mailboxes": snapshot.listed,
            "added": snapshot.added,
            "removed": snapshot.removed,
            "changed": snapshot.changed,
            "holds_released": snapshot.holds_released.len(),
        });
        tx.update_sync(
            id,
            &SyncRun {
                source: "exchange",
                started_at: started,
                finished_at: now,
                ok: true,
                figures: &figures,
                error: None,
            },
        )?;
        Ok::<_, ExchangeError>(snapshot)
    });
    let _ = r.store.borrow_mut().stage_drop();
    Ok((listing, applied?))
}

/// Whether a failed statistics call says something about the whole tenant (the sign-in,
/// a role, throttling past the sync's patience, the network), which stops the batch, or
/// only about that mailbox, which is set aside until its figures are due again.
fn tenant_wide(e: &ExchangeError) -> bool {
    match e {
        ExchangeError::Refused { .. }
        | ExchangeError::NotFound { .. }
        | ExchangeError::Malformed { .. }
        | ExchangeError::Server { .. } => false,
        ExchangeError::GaveUp { last, .. } => {
            tenant_wide(last) || matches!(last.kind(), crate::error::Kind::RateLimited { .. })
        }
        _ => true,
    }
}

/// Fetches up to `per_cycle` of the statistics due, committing them in batches. A call
/// that fails for its mailbox alone sets that mailbox aside (until its figures are due
/// again) and the batch goes on; one that fails for the tenant stops the batch. Either is
/// reported in `out`; only the store's failure is an error.
async fn statistics(
    r: &Run<'_>,
    client: &Exchange<'_>,
    cutoff: DateTime<Utc>,
    per_cycle: usize,
    out: &mut Outcome,
) -> Result<(), crate::store::StoreError> {
    let due = r.store.borrow().statistics_due(cutoff, per_cycle)?;
    if due.is_empty() {
        return Ok(());
    }
    publish(r.progress, |p| {
        p.phase = Phase::Statistics;
        p.statistics_target = due.len() as u64;
    });
    let mut pending = due.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let mut batch: Vec<StatisticsResult> = Vec::new();
    let mut set_aside: Vec<String> = Vec::new();
    let mut last_commit = Instant::now();
    let mut stop: Option<ExchangeError> = None;
    let mut first_failure: Option<String> = None;
    let commit = |batch: &mut Vec<StatisticsResult>,
                  set_aside: &mut Vec<String>|
     -> Result<(), crate::store::StoreError> {
        if batch.is_empty() && set_aside.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        r.store.borrow_mut().write(|tx| {
            tx.store_statistics(batch, now)?;
            for id in set_aside.iter() {
                tx.mark_statistics_missing(id, now)?;
            }
            Ok::<_, crate::store::StoreError>(())
        })?;
        batch.clear();
        set_aside.clear();
        Ok(())
    };
    loop {
        while stop.is_none() && !r.cancel.is_cancelled() && in_flight.len() < client.limit() {
            let Some(id) = pending.next() else { break };
            in_flight.push(async move {
                let result = client.mailbox_statistics(&id).await;
                (id, result)
            });
        }
        let Some((id, result)) = in_flight.next().await else {
            break;
        };
        match result {
            Ok(Some((size, items))) => {
                out.statistics_fetched += 1;
                batch.push(StatisticsResult {
                    identity: id,
                    size_bytes: size,
                    item_count: items,
                });
            }
            Ok(None) => {
                out.statistics_missing += 1;
                set_aside.push(id);
            }
            Err(e) if !tenant_wide(&e) => {
                out.statistics_failed += 1;
                let text = crate::error::chain(&e);
                tracing::warn!(mailbox = %id, "statistics set aside until due again: {text}");
                first_failure.get_or_insert(format!("{id}: {text}"));
                set_aside.push(id);
            }
            Err(e) => {
                if stop.is_none() {
                    stop = Some(e);
                }
            }
        }
        publish(r.progress, |p| {
            p.statistics_done =
                out.statistics_fetched + out.statistics_missing + out.statistics_failed;
        });
        if batch.len() + set_aside.len() >= COMMIT_EVERY || last_commit.elapsed() >= COMMIT_AFTER {
            commit(&mut batch, &mut set_aside)?;
            last_commit = Instant::now();
        }
    }
    commit(&mut batch, &mut set_aside)?;
    if let Some(e) = stop.or_else(|| r.cancel.is_cancelled().then_some(ExchangeError::Cancelled)) {
        let text = crate::error::chain(&e);
        if !matches!(e, ExchangeError::Cancelled) {
            tracing::warn!("mailbox statistics stopped for this cycle: {text}");
        }
        out.statistics_kind = Some(e.kind());
        out.statistics_error = Some(text);
    } else if let Some(f) = first_failure {
        out.statistics_error = Some(format!(
            "{} mailbox(es) set aside until their figures are due again, the first {f}",
            out.statistics_failed
        ));
    }
    Ok(())
}

/// Records a listing that failed: its sync row and its audit row, nothing else.
fn record_failure(
    r: &Run<'_>,
    started: DateTime<Utc>,
    clock: Instant,
    out: &Outcome,
    e: &ExchangeError,
) {
    let message = crate::error::chain(e);
    let mut figures = out.figures();
    if let Value::Object(m) = &mut figures {
        m.insert(
            "duration_ms".into(),
            (clock.elapsed().as_millis() as u64).into(),
        );
    }
    let now = Utc::now();
    let written = r.store.borrow_mut().write(|tx| {
        tx.record_sync(&SyncRun {
            source: "exchange",
            started_at: started,
            finished_at: now,
            ok: false,
            figures: &figures,
            error: Some(&message),
        })?;
        tx.audit(
            &AuditEvent::new(Operation::SyncMailboxes)
                .details(json!({"source": "exchange", "listing": true, "figures": figures}))
                .failed(message.clone()),
            now,
        )
    });
    if let Err(w) = written {
        tracing::error!("cannot record the failed sync: {}", crate::error::chain(&w));
    }
}

/// Tells the hooks which mailboxes lost their last hold.
async fn notify_released(r: &Run<'_>, released: &[(String, Option<String>, Option<String>)]) {
    let notifier = crate::notify::Notifier::new(&r.config.notify, r.session.http().clone());
    if !notifier.is_configured() {
        tracing::warn!(
            count = released.len(),
            "inactive mailbox(es) lost their last hold and will be purged after the retention period; no [notify] hook is configured"
        );
        return;
    }
    let mailboxes: Vec<String> = released
        .iter()
        .map(|(id, name, smtp)| match (name, smtp) {
            (Some(n), Some(s)) => format!("{n} <{s}> ({id})"),
            (None, Some(s)) => format!("<{s}> ({id})"),
            (Some(n), None) => format!("{n} ({id})"),
            (None, None) => id.clone(),
        })
        .collect();
    notifier
        .fire(&crate::notify::Event::HoldsReleased { mailboxes })
        .await;
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_listing_asks_for_what_the_inventory_reads() {
        let mut c = Config::default();
        let s = select(&c);
        assert!(s.contains(&"ExchangeGuid".to_string()));
        assert!(s.contains(&"WhenChangedUTC".to_string()));
        assert!(!s.iter().any(|f| f == "TotalItemSize" || f == "ItemCount"));
        assert!(!s.iter().any(|f| f == "LicenseType"), "{s:?}");
        c.inventory.company_attribute = Some("CustomAttribute1".to_string().try_into().unwrap());
        c.inventory.license_attribute = "CustomAttribute7".to_string().try_into().unwrap();
        let s = select(&c);
        assert!(
            s.contains(&"CustomAttribute1".to_string())
                && s.contains(&"CustomAttribute7".to_string())
        );
    }

    #[test]
    fn records_ignore_sidecar_keys_and_read_exchange_formats() {
        let mut c = Config::default();
        c.inventory.license_attribute = "CustomAttribute7".to_string().try_into().unwrap();
        let rec = json!({
            "ExchangeGuid@data.type": "Guid",
            "ExchangeGuid": "4A3B2C1D-5E6F-47A8-B9C0-D1E2F3A4B5C6",
            "DisplayName": "Ann Archer",
            "PrimarySmtpAddress": "Ann@Contoso.com",
            "WhenSoftDeleted": "2022-09-21T08:07:47.0000000+00:00",
            "WhenChangedUTC": "2024-03-01T10:00:00.1234567Z",
            "InPlaceHolds@odata.type": "#Collection(String)",
            "InPlaceHolds": ["UniH7d3e1f2a-0000-4000-8000-000000000001"],
            "ExternalDirectoryObjectId": "",
            "MailboxPlan": "ExchangeOnlineEnterprise-bd4b2f6b-2e37-4a45-8e63-c4e7ea2a9c8f",
            "CustomAttribute7": "",
        });
        let raw = parse_record(&c, rec.as_object().unwrap()).unwrap();
        assert_eq!(raw.exchange_guid, "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6");
        assert_eq!(raw.primary_smtp.as_deref(), Some("ann@contoso.com"));
        assert_eq!(raw.external_directory_object_id, None);
        assert_eq!(raw.license.as_deref(), Some("E3"), "mapped from the plan");
        assert_eq!(
            raw.when_changed.map(crate::time::stamp).as_deref(),
            Some("2024-03-01T10:00:00.123Z")
        );
        assert_eq!(
            raw.when_soft_deleted.map(crate::time::stamp).as_deref(),
            Some("2022-09-21T08:07:47Z")
        );
    }

    #[test]
    fn the_tenant_comes_from_the_token_claim() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"tid":"3B7C2F9A-5D41-4E8B-9C06-1F2A7D4E8B53","aud":"x"}"#);
        let token = secrecy::SecretString::from(format!("e30.{claims}.sig"));
        assert_eq!(
            token_tenant(&token).as_deref(),
            Some("3b7c2f9a-5d41-4e8b-9c06-1f2a7d4e8b53")
        );
        assert_eq!(
            token_tenant(&secrecy::SecretString::from("opaque".to_string())),
            None
        );
    }
}
