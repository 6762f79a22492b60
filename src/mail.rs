//! Outgoing mail as the queue accepts it: the message, its checks, and the readers of
//! what people and tools hand in (command-line options, a JSON Lines batch).
//!
//! Everything is checked before anything is stored: well-formed addresses, at least one
//! recipient, a subject or a body, readable attachments within Graph's 3 MB limit for
//! inline attachments. A bad mail is a clear error naming what is wrong (and in a batch,
//! the line), never a half-enqueued batch.

pub mod graph;
pub mod outbox;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Graph's limit for inline attachments, in total per mail (bigger ones need an upload
/// session).
pub const MAX_ATTACHMENT_BYTES: usize = 3 * 1024 * 1024;
/// Exchange Online's default limit of recipients per message.
pub const MAX_RECIPIENTS: usize = 500;
/// The longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 200;

/// Why a mail was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    #[error("`{0}` is not an e-mail address")]
    Address(String),
    #[error("the mail has no recipient: give at least one --to, --cc or --bcc")]
    NoRecipient,
    #[error("the mail has {0} recipients; Exchange Online accepts at most {MAX_RECIPIENTS}")]
    TooManyRecipients(usize),
    #[error("the mail has neither a subject nor a body")]
    Empty,
    #[error("cannot read {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error(
        "the attachments come to {total} bytes; Graph takes at most {MAX_ATTACHMENT_BYTES} bytes of attachments per mail"
    )]
    AttachmentsTooLarge { total: usize },
    #[error("`{0}` is not a sender: give a mailbox address or an object id (GUID)")]
    Sender(String),
    #[error("the idempotency key must be 1 to {MAX_KEY_LEN} printable characters")]
    Key,
    #[error("give the body as text or as a file, not both")]
    BodyTwice,
    #[error("line {line}: {detail}")]
    Line { line: usize, detail: String },
}

/// How the body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    Text,
    Html,
}

impl BodyType {
    /// Graph's `contentType`.
    pub fn graph_name(self) -> &'static str {
        match self {
            BodyType::Text => "Text",
            BodyType::Html => "HTML",
        }
    }
}

/// A file attached to a mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A mail ready to be queued: every field checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// The mailbox it is sent from; `None`: the signed-in account.
    pub sender: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub body: String,
    pub body_type: BodyType,
    pub attachments: Vec<Attachment>,
    /// Enqueuing the same key twice enqueues once.
    pub key: Option<String>,
}

/// A mail as given, before its checks (command-line options or a batch line).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    #[serde(default, deserialize_with = "one_or_many")]
    pub to: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub cc: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub bcc: Vec<String>,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub body: Option<String>,
    /// A file holding the body (instead of `body`).
    #[serde(default)]
    pub body_file: Option<PathBuf>,
    #[serde(default)]
    pub html: bool,
    #[serde(default, deserialize_with = "one_or_many")]
    pub attach: Vec<PathBuf>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => vec![v],
        OneOrMany::Many(v) => v,
    })
}

/// Checks an address: a local part and a domain, nothing else (no display name).
pub fn check_address(text: &str) -> Result<String, MailError> {
    let a = text.trim();
    let bad = || MailError::Address(text.to_string());
    let (local, domain) = a.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b) || b >= 0x80
        });
    if !local_ok || a.len() > 254 {
        return Err(bad());
    }
    let domain = crate::config::check_domain(domain).map_err(|_| bad())?;
    Ok(format!("{local}@{domain}"))
}

/// A MIME type for an attachment, from its file name.
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "log") => "text/plain",
        Some("csv") => "text/csv",
        Some("htm" | "html") => "text/html",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Some("docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Some("eml") => "message/rfc822",
        _ => "application/octet-stream",
    }
}

fn read(path: &Path, base: Option<&Path>) -> Result<(PathBuf, Vec<u8>), MailError> {
    let full = match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path.to_path_buf(),
    };
    let bytes = std::fs::read(&full).map_err(|e| MailError::Read {
        path: full.clone(),
        detail: e.to_string(),
    })?;
    Ok((full, bytes))
}

/// Checks a sending mailbox: an address (user principal name) or an object id (GUID),
/// as Graph's `/users/{id}` takes them.
pub fn check_sender(text: &str) -> Result<String, MailError> {
    check_address(text).or_else(|_| {
        uuid::Uuid::try_parse(text.trim())
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| MailError::Sender(text.to_string()))
    })
}

impl Draft {
    /// Checks the draft and reads its files; relative paths are taken from `base` (a
    /// batch file's folder) or the working folder.
    pub fn check(self, base: Option<&Path>) -> Result<NewMail, MailError> {
        let addresses = |v: &[String]| {
            v.iter()
                .map(|a| check_address(a))
                .collect::<Result<Vec<_>, _>>()
        };
        let (to, cc, bcc) = (
            addresses(&self.to)?,
            addresses(&self.cc)?,
            addresses(&self.bcc)?,
        );
        let count = to.len() + cc.len() + bcc.len();
        if count == 0 {
            return Err(MailError::NoRecipient);
        }
        if count > MAX_RECIPIENTS {
            return Err(MailError::TooManyRecipients(count));
        }
        let sender = self.from.as_deref().map(check_sender).transpose()?;
        let body = match (self.body, self.body_file) {
            (Some(b), None) => b,
            (None, Some(p)) => {
                let (full, bytes) = read(&p, base)?;
                String::from_utf8(bytes).map_err(|_| MailError::Read {
                    path: full,
                    detail: "the body is not UTF-8 text".into(),
                })?
            }
            (None, None) => String::new(),
            (Some(_), Some(_)) => return Err(MailError::BodyTwice),
        };
        if self.subject.trim().is_empty() && body.trim().is_empty() {
            return Err(MailError::Empty);
        }
        let mut attachments = Vec::with_capacity(self.attach.len());
        let mut total = 0usize;
        for p in &self.attach {
            let (full, bytes) = read(p, base)?;
            total += bytes.len();
            if total > MAX_ATTACHMENT_BYTES {
                return Err(MailError::AttachmentsTooLarge { total });
            }
            let name = full
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "attachment".into());
            attachments.push(Attachment {
                content_type: content_type(&name).to_string(),
                name,
                bytes,
            });
        }
        let key = match self.key {
            None => None,
            Some(k)
                if !k.is_empty() && k.len() <= MAX_KEY_LEN && !k.chars().any(char::is_control) =>
            {
                Some(k)
            }
            Some(_) => return Err(MailError::Key),
        };
        Ok(NewMail {
            sender,
            to,
            cc,
            bcc,
            subject: self.subject,
            body,
            body_type: if self.html {
                BodyType::Html
            } else {
                BodyType::Text
            },
            attachments,
            key,
        })
    }
}

/// Reads a JSON Lines batch: one mail per line (blank lines skipped), all checked before
/// any is returned; the first bad line is named. Relative file paths in a line are taken
/// from the batch file's folder.
pub fn read_batch(text: &str, base: Option<&Path>) -> Result<Vec<NewMail>, MailError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |detail: String| MailError::Line {
            line: i + 1,
            detail,
        };
        let draft: Draft = serde_json::from_str(line).map_err(|e| {
            at(format!(
                "not a mail object ({:?} error at column {}): expected fields to, cc, bcc, subject, body, body_file, html, attach, from, key",
                e.classify(),
                e.column()
            ))
        })?;
        out.push(draft.check(base).map_err(|e| at(e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_domains_lower_cased() {
        assert_eq!(
            check_address(" Ada@Contoso.COM ").unwrap(),
            "Ada@contoso.com"
        );
        assert_eq!(
            check_address("o'neil+ops@mail.contoso.com").unwrap(),
            "o'neil+ops@mail.contoso.com"
        );
        for bad in [
            "",
            "ada",
            "@contoso.com",
            "ada@",
            "ada@contoso",
            "a..b@contoso.com",
            "ada @contoso.com",
            "Ada <ada@contoso.com>",
        ] {
            assert_eq!(
                check_address(bad),
                Err(MailError::Address(bad.into())),
                "{bad}"
            );
        }
    }

    fn draft(to: &[&str]) -> Draft {
        Draft {
            to: to.iter().map(|s| s.to_string()).collect(),
            subject: "Quarterly hold review".into(),
            ..Draft::default()
        }
    }

    #[test]
    fn a_mail_needs_a_recipient_and_a_subject_or_body() {
        assert_eq!(draft(&[]).check(None), Err(MailError::NoRecipient));
        let mut d = draft(&["ada@contoso.com"]);
        d.subject = " ".into();
        assert_eq!(d.check(None), Err(MailError::Empty));
        let mut d = draft(&["ada@contoso.com"]);
        d.bcc = vec!["audit@contoso.com".into()];
        d.html = true;
        d.from = Some("ops@contoso.com".into());
        let m = d.check(None).unwrap();
        assert_eq!(
            (m.body_type, m.sender.as_deref()),
            (BodyType::Html, Some("ops@contoso.com"))
        );
        let mut d = draft(&["ada@contoso.com"]);
        d.from = Some("00000000-0000-0000-0000-00000000000A".into());
        assert_eq!(
            d.check(None).unwrap().sender.as_deref(),
            Some("00000000-0000-0000-0000-00000000000a")
        );
        let mut d = draft(&["ada@contoso.com"]);
        d.from = Some("ops".into());
        assert_eq!(d.check(None), Err(MailError::Sender("ops".into())));
        let many: Vec<String> = (0..=MAX_RECIPIENTS)
            .map(|i| format!("u{i}@contoso.com"))
            .collect();
        let d = Draft {
            to: many,
            subject: "x".into(),
            ..Draft::default()
        };
        assert_eq!(
            d.check(None),
            Err(MailError::TooManyRecipients(MAX_RECIPIENTS + 1))
        );
        let mut d = draft(&["ada@contoso.com"]);
        (d.body, d.body_file) = (Some("b".into()), Some("b.txt".into()));
        assert_eq!(d.check(None), Err(MailError::BodyTwice));
        let mut d = draft(&["ada@contoso.com"]);
        d.key = Some("k\n".into());
        assert_eq!(d.check(None), Err(MailError::Key));
    }

    #[test]
    fn attachments_are_read_typed_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.csv"), b"a,b\n1,2\n").unwrap();
        std::fs::write(dir.path().join("big.bin"), vec![0u8; MAX_ATTACHMENT_BYTES]).unwrap();
        let mut d = draft(&["ada@contoso.com"]);
        d.attach = vec!["report.csv".into()];
        let m = d.check(Some(dir.path())).unwrap();
        assert_eq!(m.attachments[0].name, "report.csv");
        assert_eq!(m.attachments[0].content_type, "text/csv");
        let mut d = draft(&["ada@contoso.com"]);
        d.attach = vec!["report.csv".into(), "big.bin".into()];
        assert_eq!(
            d.check(Some(dir.path())),
            Err(MailError::AttachmentsTooLarge {
                total: MAX_ATTACHMENT_BYTES + 8
            })
        );
        let mut d = draft(&["ada@contoso.com"]);
        d.attach = vec!["missing.pdf".into()];
        let e = d.check(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("missing.pdf"), "{e}");
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_names_the_bad_line() {
        let ok = "{\"to\": \"ada@contoso.com\", \"subject\": \"one\"}\n\n\
                  {\"to\": [\"bob@contoso.com\"], \"cc\": \"c@contoso.com\", \"body\": \"two\", \"key\": \"k2\"}\n";
        let mails = read_batch(ok, None).unwrap();
        assert_eq!(mails.len(), 2);
        assert_eq!(mails[1].cc, vec!["c@contoso.com"]);
        assert_eq!(mails[1].key.as_deref(), Some("k2"));
        let bad = format!("{ok}{{\"to\": \"nobody\", \"subject\": \"x\"}}\n");
        assert_eq!(
            read_batch(&bad, None).unwrap_err().to_string(),
            "line 4: `nobody` is not an e-mail address"
        );
        let e = read_batch("{\"to\": \"a@contoso.com\", \"subjekt\": \"x\"}", None).unwrap_err();
        assert!(
            e.to_string().starts_with("line 1: not a mail object"),
            "{e}"
        );
    }
}
