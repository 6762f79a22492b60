//! The live sync against the emulated identity provider and Exchange admin endpoint on
//! loopback, with a real session (device-code sign-in, the encrypted token file) and a
//! real SQLite cache.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::auth::Session;
use crate::config::Config;
use crate::paths::Paths;
use crate::store::{AuditFilter, Store};
use imm_emulators::exchange::{
    ExchangeFailure, ExchangeOptions, ExchangeServer, TenantMailbox, synthetic_tenant,
};
use imm_emulators::identity::{IdentityOptions, IdentityProvider, TEST_CLIENT_ID};

/// A signed-in home: the provider, Exchange (checking tokens), the store and the session.
struct Home {
    dir: tempfile::TempDir,
    idp: IdentityProvider,
    exo: ExchangeServer,
    config: Config,
    store: RefCell<Store>,
    session: Session,
    progress: ProgressSlot,
}

impl Home {
    async fn new(tenant: Vec<TenantMailbox>, sync: &str) -> Home {
        Self::with(tenant, sync, ExchangeOptions::default(), "").await
    }

    async fn with(
        tenant: Vec<TenantMailbox>,
        sync: &str,
        opts: ExchangeOptions,
        extra: &str,
    ) -> Home {
        let dir = tempfile::tempdir().unwrap();
        let idp = IdentityProvider::start(IdentityOptions {
            interval: Some(1),
            ..IdentityOptions::default()
        })
        .await
        .unwrap();
        let exo = ExchangeServer::start(
            ExchangeOptions {
                token_checker: Some(idp.token_checker()),
                ..opts
            },
            tenant,
        )
        .await
        .unwrap();
        let text = format!(
            "client_id = \"{TEST_CLIENT_ID}\"\nauthority = \"{}\"\nexchange_url = \"{}\"\n\
             {extra}\n[auth]\ntoken_store = \"file\"\n[sync]\nsource = \"exchange\"\n{sync}",
            idp.authority(),
            exo.base_url()
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        let paths = Paths::resolve_with(Some(dir.path().to_path_buf()), None, None).unwrap();
        let store = Store::open(&paths.database).unwrap();
        let http = crate::http::client(&config.http).unwrap();
        let settings = crate::auth::Settings::from_config(&config).unwrap();
        let session = Session::open(settings.clone(), &config, &paths, http.clone())
            .await
            .unwrap();
        let endpoints = session.endpoints().await.unwrap();
        let code = crate::auth::device::request_code(
            &http,
            &endpoints,
            TEST_CLIENT_ID,
            &settings.scope(Resource::Exchange),
        )
        .await
        .unwrap();
        assert!(idp.approve(&code.user_code));
        let tokens = crate::auth::device::poll_for_tokens(
            &http,
            &endpoints,
            TEST_CLIENT_ID,
            &code,
            Duration::from_secs(30),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        session.complete_sign_in(tokens, Utc::now()).await.unwrap();
        Home {
            dir,
            idp,
            exo,
            config,
            store: RefCell::new(store),
            session,
            progress: ProgressSlot::default(),
        }
    }

    async fn sync(&self, list: bool) -> Result<Outcome, ExchangeError> {
        self.sync_with(list, &CancellationToken::new()).await
    }

    async fn sync_with(
        &self,
        list: bool,
        cancel: &CancellationToken,
    ) -> Result<Outcome, ExchangeError> {
        run(
            &Run {
                config: &self.config,
                session: &self.session,
                store: &self.store,
                cancel,
                progress: &self.progress,
                allow_removals: false,
            },
            list,
        )
        .await
    }

    /// A sync against another admin endpoint (a one-off server), expected to fail.
    async fn sync_against(&self, url: &str) -> ExchangeError {
        let mut config = self.config.clone();
        config.exchange_url = Some(url.to_string().try_into().unwrap());
        run(
            &Run {
                config: &config,
                session: &self.session,
                store: &self.store,
                cancel: &CancellationToken::new(),
                progress: &self.progress,
                allow_removals: false,
            },
            true,
        )
        .await
        .unwrap_err()
    }

    /// The cache as identity → (name, address, holds, size, items).
    #[allow(clippy::type_complexity)]
    fn cache(
        &self,
    ) -> BTreeMap<
        String,
        (
            Option<String>,
            Option<String>,
            Vec<String>,
            Option<u64>,
            Option<u64>,
        ),
    > {
        self.store
            .borrow()
            .all_mailboxes()
            .unwrap()
            .into_iter()
            .map(|m| {
                (
                    m.identity.clone(),
                    (
                        m.display_name,
                        m.primary_smtp,
                        m.hold_types
                            .iter()
                            .map(|h| h.as_str().to_string())
                            .collect(),
                        m.size_bytes,
                        m.item_count,
                    ),
                )
            })
            .collect()
    }

    /// The tenant's inactive mailboxes in the same shape, as the inventory reads them.
    #[allow(clippy::type_complexity)]
    fn tenant(
        &self,
    ) -> BTreeMap<
        String,
        (
            Option<String>,
            Option<String>,
            Vec<String>,
            Option<u64>,
            Option<u64>,
        ),
    > {
        self.exo
            .inactive()
            .into_iter()
            .map(|t| {
                let holds = crate::inventory::hold_types(
                    t.litigation_hold,
                    &t.in_place_holds,
                    t.compliance_tag_hold,
                    t.delay_hold,
                    t.delay_release_hold,
                );
                (
                    t.exchange_guid.clone(),
                    (
                        Some(t.display_name.clone()),
                        Some(t.primary_smtp.to_lowercase()),
                        holds.iter().map(|h| h.as_str().to_string()).collect(),
                        Some(t.total_item_size_bytes),
                        Some(t.item_count),
                    ),
                )
            })
            .collect()
    }

    fn audit_count(&self, op: Operation) -> usize {
        self.store
            .borrow()
            .audit_rows(&AuditFilter {
                operation: Some(op),
                ..AuditFilter::default()
            })
            .unwrap()
            .len()
    }

    fn changes(&self) -> Vec<crate::store::MailboxChange> {
        self.store
            .borrow()
            .mailbox_changes(None, 1_000_000)
            .unwrap()
    }
}

const FAST: &str = "page_size = 10\nstatistics_per_cycle = 100000\nconcurrency = 3\n";

#[tokio::test(flavor = "current_thread")]
async fn a_first_sync_equals_the_tenant_and_an_unchanged_one_changes_nothing() {
    let home = Home::new(
        synthetic_tenant(10_000, 7),
        "statistics_per_cycle = 100000\nconcurrency = 4\n",
    )
    .await;
    let out = home.sync(true).await.unwrap();
    let snap = out.snapshot.clone().unwrap();
    assert_eq!((snap.listed, snap.added, snap.removed), (10_000, 10_000, 0));
    assert_eq!(out.pages, 10, "1,000 a page");
    assert_eq!(out.statistics_fetched, 10_000);
    assert_eq!(out.statistics_due, 0);
    assert_eq!(home.cache(), home.tenant());
    assert_eq!(home.changes().len(), 10_000);
    assert_eq!(home.audit_count(Operation::MailboxAdded), 10_000);
    assert_eq!(home.audit_count(Operation::SyncMailboxes), 1);
    let stats = home.exo.requests();
    assert_eq!(stats.statistics_calls, 10_000);
    assert!(stats.max_in_flight <= 4, "{}", stats.max_in_flight);
    // The listing asked for exactly the inventory's properties, with the admin as anchor
    // on every page, and sent the listing's cookie back.
    assert_eq!(stats.last_select.clone().unwrap(), select(&home.config));
    assert!(
        stats
            .anchors
            .iter()
            .all(|a| a.as_deref() == Some("UPN:adele.vance@contoso.onmicrosoft.com")),
        "{:?}",
        stats.anchors
    );
    assert_eq!(stats.continuations_without_cookie, 0);
    assert_eq!(stats.continuations_with_cookie, 9);
    // Shared UPNs stay apart: the ExchangeGuid is the key.
    let upns: Vec<_> = home
        .exo
        .inactive()
        .iter()
        .map(|t| t.user_principal_name.clone())
        .collect();
    let distinct: BTreeSet<_> = upns.iter().collect();
    assert!(distinct.len() < upns.len(), "the tenant shares some UPNs");

    let again = home.sync(true).await.unwrap();
    let snap = again.snapshot.unwrap();
    assert_eq!((snap.added, snap.removed, snap.changed), (0, 0, 0));
    assert_eq!(again.statistics_fetched, 0);
    assert_eq!(
        home.exo.requests().statistics_calls,
        10_000,
        "no statistics asked again"
    );
    assert_eq!(home.changes().len(), 10_000);
    assert_eq!(home.cache(), home.tenant());
}

#[tokio::test(flavor = "current_thread")]
async fn tenant_changes_show_in_the_cache_the_history_the_audit_log_and_the_hook() {
    let hook = tempfile::NamedTempFile::new().unwrap();
    let notify = format!(
        "[notify]\ncommand = [\"/bin/sh\", \"-c\", \"echo \\\"$IMM_EVENT $IMM_COUNT $IMM_MAILBOXES\\\" >> {}\"]\n",
        hook.path().display()
    );
    let tenant = synthetic_tenant(40, 3);
    let home = Home::with(tenant.clone(), FAST, ExchangeOptions::default(), &notify).await;
    home.sync(true).await.unwrap();
    let calls_before = home.exo.requests().statistics_calls;

    let new: Vec<TenantMailbox> = synthetic_tenant(42, 99).into_iter().take(2).collect();
    for m in &new {
        home.exo.add(m.clone());
    }
    let gone = tenant[0].exchange_guid.clone();
    assert!(home.exo.remove(&gone));
    let released = tenant[1].exchange_guid.clone();
    assert!(home.exo.release_holds(&released));
    let held = tenant[2].exchange_guid.clone();
    assert!(home.exo.update(&held, |m| {
        m.in_place_holds
            .push("UniH7d3e1f2a-0000-4000-8000-0000000000aa".into());
    }));
    let out = home.sync(true).await.unwrap();
    let snap = out.snapshot.unwrap();
    assert_eq!((snap.added, snap.removed), (2, 1));
    assert_eq!(home.cache(), home.tenant());
    // Statistics for the two new mailboxes and the two that changed, nothing else.
    assert_eq!(home.exo.requests().statistics_calls - calls_before, 4);

    let changes: Vec<(String, String)> = home
        .changes()
        .into_iter()
        .filter(|c| c.sync_id == snap.sync_id)
        .map(|c| (c.identity, c.change.as_str().to_string()))
        .collect();
    assert!(
        changes.contains(&(gone.clone(), "removed".into())),
        "{changes:?}"
    );
    assert!(changes.contains(&(released.clone(), "holds_removed".into())));
    assert!(changes.contains(&(held.clone(), "holds_added".into())));
    for m in &new {
        assert!(changes.contains(&(m.exchange_guid.clone(), "added".into())));
    }
    assert_eq!(home.audit_count(Operation::MailboxRemoved), 1);
    assert!(home.audit_count(Operation::MailboxChanged) >= 2);
    assert_eq!(snap.holds_released.len(), 1);
    assert_eq!(snap.holds_released[0].0, released);
    let fired = std::fs::read_to_string(hook.path()).unwrap();
    assert!(
        fired.starts_with("holds_released 1 ") && fired.contains(&released),
        "{fired}"
    );
}

/// A small tenant whose second page fails once this way: the sync waits and completes.
async fn survives(failure: ExchangeFailure) {
    let home = Home::new(synthetic_tenant(35, 11), FAST).await;
    home.exo.fail_page(2, failure.clone());
    let out = home
        .sync(true)
        .await
        .unwrap_or_else(|e| panic!("{failure:?}: {e}"));
    assert!(out.throttled_waits >= 1, "{failure:?}");
    assert_eq!(home.cache(), home.tenant(), "{failure:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn passing_failures_are_waited_out() {
    let soon = (Utc::now() + chrono::Duration::seconds(1)).to_rfc2822();
    for f in [
        ExchangeFailure::Throttled {
            retry_after: Some("1".into()),
        },
        ExchangeFailure::Throttled {
            retry_after: Some("0.25".into()),
        },
        ExchangeFailure::Throttled {
            retry_after: Some(soon),
        },
        ExchangeFailure::ServiceUnavailable {
            retry_after: Some("0.1".into()),
        },
        ExchangeFailure::GatewayTimeout,
        ExchangeFailure::ConcurrencyLimit { status: 400 },
        ExchangeFailure::ServerException("DCOverloadedException".into()),
        ExchangeFailure::CutOffBody,
        ExchangeFailure::NotJson,
        ExchangeFailure::DropConnection,
    ] {
        survives(f).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_token_is_renewed_once() {
    let home = Home::new(synthetic_tenant(15, 5), FAST).await;
    home.exo
        .fail_next(1, ExchangeFailure::Unauthorized { claims: None });
    let out = home.sync(true).await.unwrap();
    assert_eq!(out.snapshot.unwrap().listed, 15);

    home.exo
        .remove(&home.exo.inactive()[0].exchange_guid.clone());
    home.exo
        .fail_next(2, ExchangeFailure::Unauthorized { claims: None });
    let e = home.sync(true).await.unwrap_err();
    assert!(
        matches!(e, ExchangeError::Unauthorized { claims: false, .. }),
        "{e}"
    );
    assert_eq!(home.cache().len(), 15, "a failed listing changes nothing");

    home.exo.fail_next(
        1,
        ExchangeFailure::Unauthorized {
            claims: Some(r#"{"access_token":{"nbf":{"essential":true}}}"#.into()),
        },
    );
    let e = home.sync(true).await.unwrap_err();
    assert!(e.to_string().contains("claims challenge"), "{e}");
    assert!(e.kind().needs_person());
}

#[tokio::test(flavor = "current_thread")]
async fn refusals_say_what_is_wrong_and_change_nothing() {
    let home = Home::new(synthetic_tenant(30, 8), FAST).await;
    home.sync(true).await.unwrap();
    for m in home.exo.inactive().iter().take(10) {
        home.exo.remove(&m.exchange_guid);
    }
    let changes = home.changes().len();
    home.exo.fail_page(2, ExchangeFailure::Forbidden);
    let e = home.sync(true).await.unwrap_err();
    let text = crate::error::chain(&e);
    assert!(
        text.contains("HTTP 403")
            && text.contains("required role")
            && text.contains("View-Only Recipients"),
        "{text}"
    );
    assert!(e.kind().needs_person());
    assert_eq!(home.cache().len(), 30, "nothing removed");
    assert_eq!(home.changes().len(), changes);
    let (last, _) = home.store.borrow().last_syncs().unwrap();
    assert!(!last.unwrap().ok);

    home.exo.fail_page(1, ExchangeFailure::NotFound);
    let e = home.sync(true).await.unwrap_err();
    assert!(matches!(e, ExchangeError::NotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("ManagementObjectNotFoundException"),
        "{e}"
    );

    // Out of patience: the sync gives up within its bounds and keeps the cache.
    for _ in 0..10 {
        home.exo.fail_page(
            2,
            ExchangeFailure::Throttled {
                retry_after: Some("0.05".into()),
            },
        );
    }
    home.exo.fail_next(
        10,
        ExchangeFailure::Throttled {
            retry_after: Some("0.05".into()),
        },
    );
    let e = home.sync(true).await.unwrap_err();
    assert!(
        matches!(e, ExchangeError::GaveUp { attempts: 6, .. }),
        "{e}"
    );
    assert_eq!(home.cache().len(), 30);
}

#[tokio::test(flavor = "current_thread")]
async fn an_expired_link_restarts_the_listing_and_never_splices() {
    let home = Home::with(
        synthetic_tenant(60, 21),
        FAST,
        ExchangeOptions {
            latency: Duration::from_millis(20),
            ..ExchangeOptions::default()
        },
        "",
    )
    .await;
    // While the listing is on its fourth page, a mailbox leaves the tenant and every
    // link expires: the listing starts again, and the mailbox is not in the cache.
    let leaving = home.exo.inactive()[0].exchange_guid.clone();
    let exo = &home.exo;
    let watcher = async {
        while exo.requests().pages_served < 3 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(exo.remove(&leaving));
        exo.expire_links();
    };
    let (out, ()) = tokio::join!(home.sync(true), watcher);
    let out = out.unwrap();
    assert_eq!(out.restarts, 1);
    assert_eq!(out.snapshot.unwrap().listed, 59);
    assert!(!home.cache().contains_key(&leaving));
    assert_eq!(home.cache(), home.tenant());

    // Three expiries in one sync: given up, nothing changed.
    let before = home.cache();
    home.exo
        .remove(&home.exo.inactive()[0].exchange_guid.clone());
    for _ in 0..3 {
        home.exo.fail_page(2, ExchangeFailure::PaginationExpired);
    }
    let e = home.sync(true).await.unwrap_err();
    assert!(matches!(e, ExchangeError::TooManyRestarts { .. }), "{e}");
    assert_eq!(home.cache(), before);
}

#[tokio::test(flavor = "current_thread")]
async fn statistics_respect_the_concurrency_and_spread_over_cycles() {
    let home = Home::with(
        synthetic_tenant(100, 4),
        "page_size = 50\nstatistics_per_cycle = 30\nconcurrency = 2\n",
        ExchangeOptions {
            latency: Duration::from_millis(5),
            ..ExchangeOptions::default()
        },
        "",
    )
    .await;
    let out = home.sync(true).await.unwrap();
    assert_eq!((out.statistics_fetched, out.statistics_due), (30, 70));
    let unknown = home.cache().values().filter(|m| m.3.is_none()).count();
    assert_eq!(unknown, 70, "sizes not fetched yet are unknown, not 0");
    let stats = home.exo.requests();
    assert!(stats.max_in_flight <= 2, "{}", stats.max_in_flight);
    assert_eq!(stats.concurrency_refusals, 0);
    // The next cycles fetch the rest without listing again.
    for _ in 0..3 {
        home.sync(false).await.unwrap();
    }
    assert_eq!(home.cache(), home.tenant());
    assert!(
        home.exo
            .requests()
            .statistics_per_mailbox
            .values()
            .all(|n| *n == 1)
    );

    // Throttled by the per-tenant concurrency limit: fewer calls in flight, all fetched.
    let home = Home::with(
        synthetic_tenant(60, 5),
        "page_size = 50\nstatistics_per_cycle = 1000\nconcurrency = 6\nrequest_attempts = 20\n",
        ExchangeOptions {
            latency: Duration::from_millis(10),
            concurrency_cap: Some(2),
            ..ExchangeOptions::default()
        },
        "",
    )
    .await;
    let out = home.sync(true).await.unwrap();
    assert_eq!(out.statistics_due, 0, "{:?}", out.statistics_error);
    assert!(out.throttled_waits > 0);
    assert_eq!(home.cache(), home.tenant());
}

#[tokio::test(flavor = "current_thread")]
async fn a_stopped_sync_keeps_the_statistics_it_fetched() {
    let home = Home::with(
        synthetic_tenant(200, 6),
        "page_size = 100\nstatistics_per_cycle = 1000\nconcurrency = 2\n",
        ExchangeOptions {
            latency: Duration::from_millis(5),
            ..ExchangeOptions::default()
        },
        "",
    )
    .await;
    let cancel = CancellationToken::new();
    let exo = &home.exo;
    let stopper = async {
        while exo.requests().statistics_calls < 60 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(home.sync_with(true, &cancel), stopper);
    // The listing was applied; the statistics stopped.
    let out = result.unwrap();
    assert_eq!(out.snapshot.unwrap().listed, 200);
    assert!(out.statistics_error.unwrap().contains("stopped"));
    let known = home.cache().values().filter(|m| m.3.is_some()).count();
    assert!(known >= 50, "{known}");
    home.sync(false).await.unwrap();
    assert_eq!(home.cache(), home.tenant());
    let per = home.exo.requests().statistics_per_mailbox;
    let twice = per.values().filter(|n| **n > 1).count();
    assert!(
        twice <= 2,
        "only calls in flight at the stop are repeated: {twice}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_reaches_the_database() {
    let home = Home::new(synthetic_tenant(20, 9), FAST).await;
    home.exo.fail_page(2, ExchangeFailure::Forbidden);
    let _ = home.sync(true).await;
    home.sync(true).await.unwrap();
    drop(home.store.borrow_mut().checkpoint());
    let issued = home.idp.stats().issued_secrets;
    assert!(!issued.is_empty());
    for entry in walk(home.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in &issued {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a token",
                entry.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn a_mailbox_whose_statistics_fail_is_set_aside_and_the_batch_goes_on() {
    use imm_emulators::exchange::Cmdlet;
    let home = Home::new(
        synthetic_tenant(30, 12),
        "page_size = 10\nstatistics_per_cycle = 1000\nconcurrency = 1\nrequest_attempts = 1\n",
    )
    .await;
    home.exo.fail_next_on(
        Cmdlet::GetMailboxStatistics,
        1,
        ExchangeFailure::ServerException("MapiExceptionNotFound".into()),
    );
    let out = home.sync(true).await.unwrap();
    assert_eq!(
        (out.statistics_fetched, out.statistics_failed),
        (29, 1),
        "{:?}",
        out.statistics_error
    );
    assert!(!out.statistics_kind.is_some_and(|k| k.needs_person()));
    assert!(out.statistics_error.unwrap().contains("set aside"));
    let due = home
        .store
        .borrow()
        .statistics_due_count(Utc::now() - chrono::Duration::days(7))
        .unwrap();
    assert_eq!((due.total(), due.size_unknown), (0, 1));

    // A refusal for the whole tenant stops the batch and needs a person; the listing
    // stays applied.
    let home = Home::new(synthetic_tenant(30, 13), FAST).await;
    home.exo.fail_next_on(
        Cmdlet::GetMailboxStatistics,
        100,
        ExchangeFailure::Forbidden,
    );
    let out = home.sync(true).await.unwrap();
    assert_eq!(out.snapshot.unwrap().listed, 30);
    assert!(out.statistics_kind.is_some_and(|k| k.needs_person()));
    assert!(out.statistics_error.unwrap().contains("HTTP 403"));
    assert!(out.statistics_fetched < 30);
}

/// Figures beyond what the cache stores (a signed 64-bit integer) are malformed records,
/// as they are in an imported export: the mailbox is set aside with the field named, and
/// nothing wrapped round (u64::MAX stored as -1, read back as 0) reaches the cache.
#[tokio::test(flavor = "current_thread")]
async fn statistics_beyond_the_cache_set_the_mailbox_aside_naming_the_field() {
    for (size, items, field) in [
        (1024, u64::MAX, "ItemCount"),
        (u64::MAX, 3, "TotalItemSize"),
        (i64::MAX as u64 + 1, 3, "TotalItemSize"),
    ] {
        let tenant = synthetic_tenant(5, 21);
        let odd = tenant
            .iter()
            .find(|m| m.kind == imm_emulators::exchange::MailboxKind::Inactive)
            .unwrap()
            .exchange_guid
            .clone();
        let home = Home::new(tenant, FAST).await;
        assert!(home.exo.set_statistics(&odd, size, items));
        let out = home.sync(true).await.unwrap();
        assert_eq!(out.statistics_failed, 1, "{:?}", out.statistics_error);
        let error = out.statistics_error.unwrap();
        assert!(error.contains(&odd) && error.contains(field), "{error}");
        let cache = home.cache();
        assert_eq!((cache[&odd].3, cache[&odd].4), (None, None), "{field}");
        assert!(cache.values().filter(|m| m.3.is_some()).count() >= 1);
    }
}

/// Answers that Exchange would not give, from a one-off server: a listing that warns it
/// is incomplete, a next-page link that is not text, a link that repeats. Each fails the
/// sync and leaves the cache alone.
#[tokio::test(flavor = "current_thread")]
async fn listings_exchange_calls_incomplete_or_endless_change_nothing() {
    use wiremock::matchers::{method, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let home = Home::new(synthetic_tenant(12, 14), FAST).await;
    home.sync(true).await.unwrap();
    let before = home.cache();
    let record = serde_json::json!({
        "ExchangeGuid": "4a3b2c1d-5e6f-47a8-b9c0-d1e2f3a4b5c6",
        "DisplayName": "Only One",
        "PrimarySmtpAddress": "only.one@contoso.com",
        "LitigationHoldEnabled": true,
    });
    for (answer, want) in [
        (
            serde_json::json!({"value": [record.clone()], "@adminapi.warnings": [
                "Some results are unavailable because a domain controller could not be reached."
            ]}),
            "incomplete",
        ),
        (
            serde_json::json!({"value": [record.clone()], "@adminapi.warnings": [],
                "@odata.nextLink": 42}),
            "not text",
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path_regex("^/adminapi/beta/.*/InvokeCommand$"))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .mount(&server)
            .await;
        let e = home.sync_against(&server.uri()).await;
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(home.cache(), before);
    }
    // A next-page link that leads back to itself.
    let server = MockServer::start().await;
    let link = format!(
        "{}/adminapi/beta/{}/InvokeCommand?$skiptoken=again",
        server.uri(),
        home.exo.tenant_id()
    );
    Mock::given(method("POST"))
        .and(path_regex("^/adminapi/beta/.*/InvokeCommand$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "value": [record.clone()], "@adminapi.warnings": [], "@odata.nextLink": link,
        })))
        .mount(&server)
        .await;
    let e = home.sync_against(&server.uri()).await;
    assert!(matches!(e, ExchangeError::Endless { .. }), "{e}");
    assert_eq!(home.cache(), before);
}

#[tokio::test(flavor = "current_thread")]
async fn a_second_hold_of_a_kind_the_mailbox_has_is_a_change() {
    let tenant = synthetic_tenant(10, 15);
    let home = Home::new(tenant.clone(), FAST).await;
    home.sync(true).await.unwrap();
    let guid = tenant
        .iter()
        .find(|m| m.in_place_holds.iter().any(|h| h.starts_with("UniH")))
        .or_else(|| tenant.first())
        .unwrap()
        .exchange_guid
        .clone();
    home.exo.update(&guid, |m| {
        m.in_place_holds
            .push("UniH7d3e1f2a-0000-4000-8000-0000000000bb".into());
    });
    let out = home.sync(true).await.unwrap();
    assert_eq!(out.snapshot.unwrap().changed, 1);
    let last = home.changes().pop().unwrap();
    assert_eq!(
        (last.identity.as_str(), last.change.as_str()),
        (guid.as_str(), "holds_added")
    );
    assert_eq!(
        last.details["added_holds"],
        serde_json::json!(["UniH7d3e1f2a-0000-4000-8000-0000000000bb"])
    );
}
