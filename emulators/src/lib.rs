//! Loopback emulations of the Microsoft endpoints imm-daemon talks to, for the project's
//! tests and for trying the program without a tenant. Each emulator is a real HTTP server
//! on 127.0.0.1 with in-memory state and test controls; production code never depends on
//! this module: it only ever sees a base URL, as it would for Microsoft.
//!
//! - [`identity`]: the Microsoft identity platform v2.0 (discovery, the device
//!   authorization grant, refresh-token rotation, the page where a person enters the code),
//!   or a generic certified OpenID provider answering the same protocol.
//! - [`graph`]: Microsoft Graph v1.0 mail (draft, send, sendMail, lookup by
//!   `internetMessageId`), with throttling and ambiguous failures on demand and a count of
//!   deliveries per message.
//! - [`exchange`]: the Exchange Online admin REST endpoint (`InvokeCommand`: `Get-Mailbox`
//!   and `Get-MailboxStatistics`) over a synthetic tenant of inactive mailboxes, with strict
//!   paging, throttling and broken answers on demand.

pub mod exchange;
pub mod graph;
pub mod identity;

pub use exchange::{
    Cmdlet, ExchangeFailure, ExchangeOptions, ExchangeServer, ExchangeStats, MailboxKind,
    TenantMailbox, synthetic_others, synthetic_tenant,
};

pub use graph::{
    Deliveries, Endpoint, GraphFailure, GraphOptions, GraphServer, GraphStats, StoredMessage,
    TokenChecker,
};

pub use identity::{
    AccessTokenInfo, Failure, Flavour, HeldPoll, IdentityOptions, IdentityProvider, Stats,
    TEST_CLIENT_ID, TestUser,
};

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use tokio::sync::oneshot;

/// One emulator's HTTP server on 127.0.0.1 and an ephemeral port. Dropping it stops the
/// server: the listener closes when its task next runs; on a thread of its own, that
/// thread's runtime and every connection on it end before the drop returns.
struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds a port, builds the routes with the base URL they will be served at
    /// (`http://127.0.0.1:PORT`), and serves them from a task on the current runtime.
    async fn start<T>(build: impl FnOnce(String) -> (Router, T)) -> std::io::Result<(Server, T)> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (app, built) = build(base_url(addr));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(serve(listener, app, stopped));
        let server = Server {
            stop: Some(stop),
            thread: None,
        };
        Ok((server, built))
    }

    /// Like [`Server::start`], but served from a thread of its own with a single-threaded
    /// runtime, for callers that are not async (tests that drive the real binary).
    fn start_in_background<T>(
        name: &str,
        build: impl FnOnce(String) -> (Router, T),
    ) -> std::io::Result<(Server, T)> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (app, built) = build(base_url(addr));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                        serve(listener, app, stopped).await;
                    }
                });
            })?;
        let server = Server {
            stop: Some(stop),
            thread: Some(thread),
        };
        Ok((server, built))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn serve(listener: tokio::net::TcpListener, app: Router, stopped: oneshot::Receiver<()>) {
    // Not a graceful shutdown: a stopped emulator should look like a host that went away,
    // and a test must not wait for a client's idle keep-alive connection.
    tokio::select! {
        _ = async { axum::serve(listener, app).await } => {}
        _ = stopped => {}
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_html;

    #[test]
    fn html_escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape_html(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(escape_html("FQKXJ7B2M"), "FQKXJ7B2M");
    }
}
