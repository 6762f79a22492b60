//! The Microsoft Graph mail calls the sender needs, one request each, with every answer
//! classified: create a draft (carrying our own `internetMessageId`), send it, and find a
//! message again by that id in Sent Items or Drafts after an ambiguous failure.
//!
//! Retrying, backoff and the queue's bookkeeping are the caller's: this module only says
//! what an answer means. A 429, 503 or 504, a 5xx or a transport failure on a send is
//! ambiguous (the mail may have gone), which is why sends go through drafts with an id
//! that can be looked up.

use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::error::Kind;
use crate::mail::{Attachment, BodyType};

/// What a failed Graph call means, in the product's one vocabulary:
/// - 429 or 503: [`Kind::RateLimited`], with the Retry-After; repeat after the wait.
/// - 5xx (other than 503), 408, or the network: [`Kind::Transient`]; repeatable, and for
///   a send ambiguous.
/// - 401: [`Kind::SignIn`], the sign-in the call carried was refused (expired or
///   revoked); the sender renews the token once and repeats before it believes it.
/// - 400, 403, 404 and the rest: [`Kind::Refused`]; repeating will not help.
fn kind_of(status: u16, retry_after: Option<Duration>) -> Kind {
    match status {
        429 | 503 => Kind::RateLimited { wait: retry_after },
        401 => Kind::SignIn,
        408 | 500..=599 => Kind::Transient,
        _ => Kind::Refused,
    }
}

/// A failed Graph call: Graph's status, error code and message, and its Retry-After.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} failed: {}{}{message}", status.map(|s| format!("HTTP {s} ")).unwrap_or_default(), code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct GraphError {
    pub what: &'static str,
    pub kind: Kind,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl crate::error::Classify for GraphError {
    fn kind(&self) -> Kind {
        self.kind
    }
}

impl GraphError {
    /// A failure with no answer from Graph (the network, an answer without what it
    /// must carry).
    fn local(what: &'static str, kind: Kind, message: String) -> GraphError {
        GraphError {
            what,
            kind,
            status: None,
            code: None,
            message,
            retry_after: None,
        }
    }
}

/// The message JSON of a draft.
pub struct Message<'a> {
    pub subject: &'a str,
    pub body: &'a str,
    pub body_type: BodyType,
    pub to: &'a [String],
    pub cc: &'a [String],
    pub bcc: &'a [String],
    pub attachments: &'a [Attachment],
    pub internet_message_id: &'a str,
}

impl Message<'_> {
    /// The body of the request that creates the draft.
    pub fn to_json(&self) -> Value {
        self.json_with(|a| base64::engine::general_purpose::STANDARD.encode(&a.bytes))
    }

    /// The size in bytes of [`Message::to_json`] as it is sent (compact JSON, as reqwest
    /// writes it), without encoding the attachments: their base64 needs no JSON escapes,
    /// so it counts its own length.
    pub fn request_size(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        serde_json::to_writer(&mut count, &self.json_with(|_| String::new()))
            .expect("a JSON value writes to a counter");
        count.0
            + self
                .attachments
                .iter()
                .map(|a| a.bytes.len().div_ceil(3) * 4)
                .sum::<usize>()
    }

    fn json_with(&self, content_bytes: impl Fn(&Attachment) -> String) -> Value {
        let recipients = |v: &[String]| -> Vec<Value> {
            v.iter()
                .map(|a| json!({"emailAddress": {"address": a}}))
                .collect()
        };
        let mut m = json!({
            "subject": self.subject,
            "body": {"contentType": self.body_type.graph_name(), "content": self.body},
            "toRecipients": recipients(self.to),
            "ccRecipients": recipients(self.cc),
            "bccRecipients": recipients(self.bcc),
            "internetMessageId": self.internet_message_id,
        });
        if !self.attachments.is_empty() {
            m["attachments"] = self
                .attachments
                .iter()
                .map(|a| {
                    json!({
                        "@odata.type": "#microsoft.graph.fileAttachment",
                        "name": a.name,
                        "contentType": a.content_type,
                        "contentBytes": content_bytes(a),
                    })
                })
                .collect();
        }
        m
    }
}

/// A new `internetMessageId` for a mail from `sender` (`<uuid@domain>`, RFC 5322 form).
pub fn new_internet_message_id(sender: &str) -> String {
    let domain = sender
        .rsplit_once('@')
        .map_or("imm-daemon.invalid", |(_, d)| d);
    // Unique, not secret: a random 128-bit number is plenty.
    format!("<{:032x}@{domain}>", fastrand::u128(..))
}

/// The longest `internetMessageId` a mail from `sender` gets; with no sender known yet
/// (the signed-in account's, found when the mail is sent), one of the longest domain.
pub fn longest_internet_message_id(sender: Option<&str>) -> String {
    match sender {
        Some(s) => new_internet_message_id(s),
        None => new_internet_message_id(&format!("x@{}", "d".repeat(253))),
    }
}

/// The Graph mail client for one base URL (`{graph_url}/v1.0`).
#[derive(Debug, Clone)]
pub struct GraphMail {
    http: reqwest::Client,
    base: String,
}

/// Which folder a lookup searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    SentItems,
    Drafts,
}

impl GraphMail {
    pub fn new(http: reqwest::Client, graph_url: &str) -> GraphMail {
        GraphMail {
            http,
            base: format!("{}/v1.0", graph_url.trim_end_matches('/')),
        }
    }

    fn user(&self, sender: &str) -> String {
        format!(
            "{}/users/{}",
            self.base,
            url::form_urlencoded::byte_serialize(sender.as_bytes()).collect::<String>()
        )
    }

    async fn call(
        &self,
        what: &'static str,
        req: reqwest::RequestBuilder,
        token: &SecretString,
        request_id: &str,
    ) -> Result<(u16, Value), GraphError> {
        let resp = req
            .bearer_auth(token.expose_secret())
            .header("client-request-id", request_id)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| GraphError::local(what, Kind::Transient, crate::http::describe(&e)))?;
        let status = resp.status();
        let retry_after = crate::http::retry_after(resp.headers(), Utc::now());
        let body = resp.bytes().await.unwrap_or_default();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok((status.as_u16(), json));
        }
        let kind = kind_of(status.as_u16(), retry_after);
        let err = &json["error"];
        Err(GraphError {
            what,
            kind,
            status: Some(status.as_u16()),
            code: err["code"].as_str().map(str::to_string),
            message: err["message"]
                .as_str()
                .unwrap_or_else(|| status.canonical_reason().unwrap_or(""))
                .chars()
                .take(500)
                .collect(),
            retry_after,
        })
    }

    /// Creates a draft in `sender`'s mailbox; returns its id.
    pub async fn create_draft(
        &self,
        token: &SecretString,
        sender: &str,
        message: &Message<'_>,
        request_id: &str,
    ) -> Result<String, GraphError> {
        let req = self
            .http
            .post(format!("{}/messages", self.user(sender)))
            .json(&message.to_json());
        let (_, v) = self
            .call("creating the draft", req, token, request_id)
            .await?;
        v["id"].as_str().map(str::to_string).ok_or_else(|| {
            GraphError::local(
                "creating the draft",
                Kind::Refused,
                "Graph's answer has no message id".into(),
            )
        })
    }

    /// Sends a draft (202 Accepted).
    pub async fn send_draft(
        &self,
        token: &SecretString,
        sender: &str,
        draft_id: &str,
        request_id: &str,
    ) -> Result<(), GraphError> {
        let url = format!(
            "{}/messages/{}/send",
            self.user(sender),
            url::form_urlencoded::byte_serialize(draft_id.as_bytes()).collect::<String>()
        );
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_LENGTH, "0");
        self.call("sending the draft", req, token, request_id)
            .await
            .map(|_| ())
    }

    /// Finds the message carrying `internet_message_id` in `folder`; returns its id.
    pub async fn find(
        &self,
        token: &SecretString,
        sender: &str,
        folder: Folder,
        internet_message_id: &str,
        request_id: &str,
    ) -> Result<Option<String>, GraphError> {
        let folder = match folder {
            Folder::SentItems => "sentitems",
            Folder::Drafts => "drafts",
        };
        let filter = format!(
            "internetMessageId eq '{}'",
            internet_message_id.replace('\'', "''")
        );
        let mut url = url::Url::parse(&format!(
            "{}/mailFolders/{folder}/messages",
            self.user(sender)
        ))
        .map_err(|e| GraphError::local("looking the message up", Kind::Refused, e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("$filter", &filter)
            .append_pair("$select", "id,internetMessageId");
        let req = self.http.get(url);
        let (_, v) = self
            .call("looking the message up", req, token, request_id)
            .await?;
        Ok(v["value"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|m| m["id"].as_str())
            .map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imm_emulators::{GraphFailure, GraphOptions, GraphServer};

    const ME: &str = "adele.vance@contoso.onmicrosoft.com";

    fn message<'a>(to: &'a [String], imid: &'a str, files: &'a [Attachment]) -> Message<'a> {
        Message {
            subject: "Hold review",
            body: "<p>attached</p>",
            body_type: BodyType::Html,
            to,
            cc: &[],
            bcc: &[],
            attachments: files,
            internet_message_id: imid,
        }
    }

    #[test]
    fn the_request_size_is_what_is_sent() {
        let to = vec!["ben@contoso.com".to_string(), "zoë@contoso.com".to_string()];
        let files: Vec<Attachment> = (0..5)
            .map(|n| Attachment {
                name: format!("file \"{n}\".bin"),
                content_type: "application/octet-stream".into(),
                bytes: vec![0xFB; n],
            })
            .collect();
        let imid = longest_internet_message_id(None);
        assert_eq!(imid.len(), 1 + 32 + 1 + 253 + 1);
        for body in [
            "",
            "plain",
            "\"quotes\" \\ and \n\t\u{1}\u{7f} ünïcode 🙂 </p>",
        ] {
            for files in [&files[..0], &files[..]] {
                let mut m = message(&to, &imid, files);
                m.body = body;
                let sent = serde_json::to_vec(&m.to_json()).unwrap().len();
                assert_eq!(m.request_size(), sent, "{body:?}, {} files", files.len());
            }
        }
        assert_eq!(
            longest_internet_message_id(Some(ME)).len(),
            new_internet_message_id(ME).len()
        );
    }

    #[tokio::test]
    async fn a_draft_is_sent_once_and_found_again_by_its_id() {
        let g = GraphServer::start(GraphOptions::default()).await.unwrap();
        let mail = GraphMail::new(
            crate::http::client(&Default::default()).unwrap(),
            &g.base_url(),
        );
        let token = SecretString::from("any");
        let to = vec!["ben@contoso.com".to_string()];
        let files = vec![Attachment {
            name: "holds.csv".into(),
            content_type: "text/csv".into(),
            bytes: b"a,b\n".to_vec(),
        }];
        let imid = new_internet_message_id(ME);
        assert!(imid.starts_with('<') && imid.ends_with("@contoso.onmicrosoft.com>"));
        let id = mail
            .create_draft(&token, ME, &message(&to, &imid, &files), "r1")
            .await
            .unwrap();
        assert_eq!(
            mail.find(&token, ME, Folder::Drafts, &imid, "r2")
                .await
                .unwrap()
                .as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            mail.find(&token, ME, Folder::SentItems, &imid, "r3")
                .await
                .unwrap(),
            None
        );
        mail.send_draft(&token, ME, &id, "r4").await.unwrap();
        assert!(
            mail.find(&token, ME, Folder::SentItems, &imid, "r5")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(g.deliveries().of(&imid), 1);
        assert_eq!(g.sent()[0].attachments, vec!["holds.csv".to_string()]);
        assert_eq!(
            g.requests().client_request_ids,
            vec!["r1", "r2", "r3", "r4", "r5"]
        );
    }

    #[tokio::test]
    async fn answers_are_classified_with_their_retry_after() {
        let g = GraphServer::start(GraphOptions::default()).await.unwrap();
        let mail = GraphMail::new(
            crate::http::client(&Default::default()).unwrap(),
            &g.base_url(),
        );
        let token = SecretString::from("any");
        let to = vec!["ben@contoso.com".to_string()];
        let imid = new_internet_message_id(ME);
        for (value, want) in [
            ("2", Duration::from_secs(2)),
            ("2.128", Duration::from_millis(2128)),
        ] {
            g.fail_next(
                1,
                GraphFailure::Throttled {
                    retry_after: Some(value.into()),
                },
            );
            let e = mail
                .create_draft(&token, ME, &message(&to, &imid, &[]), "r")
                .await
                .unwrap_err();
            assert_eq!(
                (e.kind, e.status, e.retry_after),
                (
                    Kind::RateLimited { wait: Some(want) },
                    Some(429),
                    Some(want)
                )
            );
        }
        let date = (Utc::now() + chrono::Duration::seconds(30))
            .to_rfc2822()
            .replace("+0000", "GMT");
        g.fail_next(
            1,
            GraphFailure::Throttled {
                retry_after: Some(date),
            },
        );
        let e = mail
            .create_draft(&token, ME, &message(&to, &imid, &[]), "r")
            .await
            .unwrap_err();
        assert!(
            e.retry_after
                .is_some_and(|w| w > Duration::from_secs(25) && w <= Duration::from_secs(30)),
            "{e:?}"
        );
        g.fail_next(1, GraphFailure::GatewayTimeout);
        let e = mail
            .create_draft(&token, ME, &message(&to, &imid, &[]), "r")
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.status), (Kind::Transient, Some(504)));
        g.fail_next(1, GraphFailure::ExpiredToken);
        let e = mail
            .create_draft(&token, ME, &message(&to, &imid, &[]), "r")
            .await
            .unwrap_err();
        assert_eq!(e.kind, Kind::SignIn);
        let bad = vec!["nobody@invalid.example".to_string()];
        let e = mail
            .create_draft(&token, ME, &message(&bad, &imid, &[]), "r")
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.status, e.code.as_deref()),
            (Kind::Refused, Some(400), Some("ErrorInvalidRecipients"))
        );
        assert!(
            e.to_string()
                .starts_with("creating the draft failed: HTTP 400 ErrorInvalidRecipients: "),
            "{e}"
        );
        let e = mail
            .create_draft(&token, "ghost@contoso.com", &message(&to, &imid, &[]), "r")
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.status), (Kind::Refused, Some(404)));
        assert_eq!(g.deliveries().total, 0);
    }
}
