//! Outgoing mail as the queue accepts it: the message, its checks, and the readers of
//! what people and tools hand in (command-line options, a JSON Lines batch).
//!
//! Everything is checked before anything is stored: well-formed addresses, at least one
//! recipient, a subject or a body, a subject Exchange takes, attachments and body files
//! that are regular files (a FIFO or a device would block or never end) and none of the
//! program's own secrets, Graph's 3 MB limit for inline attachments and its 4 MB limit
//! for the request that carries the mail, and in a batch each idempotency key once. A
//! bad mail is a clear error naming what is wrong (and in a batch, the line), never a
//! half-enqueued batch. Batches and body files may be UTF-8 with or without a byte order
//! mark or UTF-16 with one, as PowerShell writes them ([`crate::text`]).
//!
//! Once queued, a mail has a [`MailState`]; what a person may do to the queue (add,
//! retry, cancel, purge) and what each leaves in the audit log is [`queue`]'s.

pub mod graph;
pub mod outbox;
pub mod queue;
mod state;
pub mod step;

pub use state::{MailState, UnknownMailState};

use std::collections::HashMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Graph's limit for inline attachments, in total per mail (bigger ones need an upload
/// session).
pub const MAX_ATTACHMENT_BYTES: usize = 3 * 1024 * 1024;
/// Graph's limit for one request ("The maximum request length supported is 4MB"): the
/// draft's JSON, its attachments base64-encoded (a third larger) and its body included.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// The longest subject Exchange takes, in UTF-16 units as it counts them.
pub const MAX_SUBJECT_CHARS: usize = 255;
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
    #[error("{path} is {what}: imm-daemon never attaches or sends the secrets of its own sign-in")]
    Secret { path: PathBuf, what: &'static str },
    #[error(
        "the attachments come to {total} bytes; Graph takes at most {MAX_ATTACHMENT_BYTES} bytes of attachments per mail"
    )]
    AttachmentsTooLarge { total: u64 },
    #[error(
        "{path} is larger than {MAX_REQUEST_BYTES} bytes, more than Graph takes in the one request that carries a mail"
    )]
    BodyTooLarge { path: PathBuf },
    #[error(
        "the mail would make a Graph request of {size} bytes (attachments grow by a third in base64); Graph takes at most {MAX_REQUEST_BYTES} bytes in one request"
    )]
    RequestTooLarge { size: usize },
    #[error("the subject is {length} characters long; Exchange takes at most {MAX_SUBJECT_CHARS}")]
    SubjectTooLong { length: usize },
    #[error("`{0}` is not a sender: give a mailbox address or an object id (GUID)")]
    Sender(String),
    #[error("the idempotency key must be 1 to {MAX_KEY_LEN} printable characters")]
    Key,
    #[error("give the body as text or as a file, not both")]
    BodyTwice,
    #[error(
        "not a mail object ({0}): expected fields to, cc, bcc, subject, body, body_file, html, attach, from, key"
    )]
    NotAMail(String),
    #[error(
        "lines {first} and {second} carry the same idempotency key `{key}`; a key queues one mail, so one of them would be dropped"
    )]
    KeyTwice {
        key: String,
        first: usize,
        second: usize,
    },
    #[error("line {line}: {error}")]
    Line { line: usize, error: Box<MailError> },
}

impl MailError {
    /// Whether a file could not be read (rather than its content refused).
    pub fn is_unreadable(&self) -> bool {
        match self {
            MailError::Read { .. } => true,
            MailError::Line { error, .. } => error.is_unreadable(),
            _ => false,
        }
    }
}

/// Files no mail may carry, known by what they are on disk rather than by their path:
/// the program's secrets ([`crate::secrets::owned_files`]). A file is compared with them
/// once it is open, by device and inode (on other systems, by canonical path), so a
/// symbolic link, a `..` path, a hard link or a file swapped in after a check is known.
#[derive(Debug, Default)]
pub struct Protected {
    files: Vec<(FileId, &'static str)>,
}

#[cfg(unix)]
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(_path: &Path, meta: &fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
type FileId = PathBuf;

#[cfg(not(unix))]
fn file_id(path: &Path, _meta: &fs::Metadata) -> Option<FileId> {
    fs::canonicalize(path).ok()
}

impl Protected {
    /// The files at `paths` that exist now.
    pub fn new(paths: impl IntoIterator<Item = (PathBuf, &'static str)>) -> Protected {
        let files = paths
            .into_iter()
            .filter_map(|(p, what)| Some((file_id(&p, &fs::metadata(&p).ok()?)?, what)))
            .collect();
        Protected { files }
    }

    fn check(&self, path: &Path, opened: &fs::Metadata) -> Result<(), MailError> {
        let id = file_id(path, opened);
        match self.files.iter().find(|(f, _)| Some(f) == id.as_ref()) {
            Some((_, what)) => Err(MailError::Secret {
                path: path.to_path_buf(),
                what,
            }),
            None => Ok(()),
        }
    }
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

/// Checks an address: a local part and a domain, nothing else (no display name)
/// ([`crate::config::check_address`]).
pub fn check_address(text: &str) -> Result<String, MailError> {
    crate::config::check_address(text).map_err(|_| MailError::Address(text.to_string()))
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

/// What a file that is not a regular file is, for messages.
fn kind_of(t: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a folder"
    } else {
        "a special file"
    }
}

/// Reads a file to attach or to send as the body: a regular file only, never a protected
/// one; its bytes, or when it holds more than `limit` bytes, its size (at least). The type is checked
/// before the file is opened (opening a device can act on it), and again on the open
/// handle, which is opened without blocking: a FIFO put in its place meanwhile neither
/// blocks the open nor is read.
fn read_file(
    path: &Path,
    base: Option<&Path>,
    limit: usize,
    protected: &Protected,
) -> Result<(PathBuf, Result<Vec<u8>, u64>), MailError> {
    let full = match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path.to_path_buf(),
    };
    let unreadable = |detail: String| MailError::Read {
        path: full.clone(),
        detail,
    };
    let regular = |meta: &fs::Metadata| {
        if meta.is_file() {
            Ok(())
        } else {
            Err(unreadable(format!(
                "it is {}, not a regular file",
                kind_of(meta.file_type())
            )))
        }
    };
    regular(&fs::metadata(&full).map_err(|e| unreadable(e.to_string()))?)?;
    let mut open = fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut open, libc::O_NONBLOCK);
    let file = open.open(&full).map_err(|e| unreadable(e.to_string()))?;
    let meta = file.metadata().map_err(|e| unreadable(e.to_string()))?;
    regular(&meta)?;
    protected.check(&full, &meta)?;
    if meta.len() > limit as u64 {
        return Ok((full, Err(meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while it is read stops at the limit all the same.
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() > limit {
        return Ok((full, Err(bytes.len() as u64)));
    }
    Ok((full, Ok(bytes)))
}

/// Checks a sending mailbox: an address (user principal name) or an object id (GUID),
/// as Graph's `/users/{id}` takes them ([`crate::config::check_sender`]).
pub fn check_sender(text: &str) -> Result<String, MailError> {
    crate::config::check_sender(text).map_err(|_| MailError::Sender(text.to_string()))
}

impl Draft {
    /// Checks the draft and reads its files; relative paths are taken from `base` (a
    /// batch file's folder) or the working folder.
    pub fn check(self, base: Option<&Path>, protected: &Protected) -> Result<NewMail, MailError> {
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
        let length = self.subject.encode_utf16().count();
        if length > MAX_SUBJECT_CHARS {
            return Err(MailError::SubjectTooLong { length });
        }
        let body = match (self.body, self.body_file) {
            (Some(b), None) => b,
            (None, Some(p)) => {
                let (full, bytes) = read_file(&p, base, MAX_REQUEST_BYTES, protected)?;
                let Ok(bytes) = bytes else {
                    return Err(MailError::BodyTooLarge { path: full });
                };
                crate::text::decode(&bytes)
                    .map_err(|detail| MailError::Read {
                        path: full,
                        detail: format!("the body is {detail}"),
                    })?
                    .0
                    .into_owned()
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
            let room = MAX_ATTACHMENT_BYTES - total;
            let (full, bytes) = read_file(p, base, room, protected)?;
            let bytes = bytes.map_err(|size| MailError::AttachmentsTooLarge {
                total: total as u64 + size,
            })?;
            total += bytes.len();
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
        let mail = NewMail {
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
        };
        let size = mail.request_size();
        if size > MAX_REQUEST_BYTES {
            return Err(MailError::RequestTooLarge { size });
        }
        Ok(mail)
    }
}

impl NewMail {
    /// The size in bytes of the Graph request that will carry this mail (the draft's
    /// JSON with its attachments base64-encoded). Its `internetMessageId` is made when it
    /// is sent; the longest it can be is counted.
    pub fn request_size(&self) -> usize {
        let imid = graph::longest_internet_message_id(self.sender.as_deref());
        graph::Message {
            subject: &self.subject,
            body: &self.body,
            body_type: self.body_type,
            to: &self.to,
            cc: &self.cc,
            bcc: &self.bcc,
            attachments: &self.attachments,
            internet_message_id: &imid,
        }
        .request_size()
    }
}

/// Reads a JSON Lines batch: one mail per line (blank lines skipped), all checked before
/// any is returned; the first bad line is named, and so are two lines with one
/// idempotency key. Relative file paths in a line are taken from the batch file's folder.
pub fn read_batch(
    text: &str,
    base: Option<&Path>,
    protected: &Protected,
) -> Result<Vec<NewMail>, MailError> {
    let mut out = Vec::new();
    let mut keys: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |error: MailError| MailError::Line {
            line: i + 1,
            error: Box::new(error),
        };
        let draft: Draft = serde_json::from_str(line).map_err(|e| {
            at(MailError::NotAMail(format!(
                "{:?} error at column {}",
                e.classify(),
                e.column()
            )))
        })?;
        let mail = draft.check(base, protected).map_err(at)?;
        if let Some(k) = &mail.key
            && let Some(first) = keys.insert(k.clone(), i + 1)
        {
            return Err(MailError::KeyTwice {
                key: k.clone(),
                first,
                second: i + 1,
            });
        }
        out.push(mail);
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
        assert_eq!(
            draft(&[]).check(None, &Protected::default()),
            Err(MailError::NoRecipient)
        );
        let mut d = draft(&["ada@contoso.com"]);
        d.subject = " ".into();
        assert_eq!(d.check(None, &Protected::default()), Err(MailError::Empty));
        let mut d = draft(&["ada@contoso.com"]);
        d.bcc = vec!["audit@contoso.com".into()];
        d.html = true;
        d.from = Some("ops@contoso.com".into());
        let m = d.check(None, &Protected::default()).unwrap();
        assert_eq!(
            (m.body_type, m.sender.as_deref()),
            (BodyType::Html, Some("ops@contoso.com"))
        );
        let mut d = draft(&["ada@contoso.com"]);
        d.from = Some("00000000-0000-0000-0000-00000000000A".into());
        assert_eq!(
            d.check(None, &Protected::default())
                .unwrap()
                .sender
                .as_deref(),
            Some("00000000-0000-0000-0000-00000000000a")
        );
        let mut d = draft(&["ada@contoso.com"]);
        d.from = Some("ops".into());
        assert_eq!(
            d.check(None, &Protected::default()),
            Err(MailError::Sender("ops".into()))
        );
        let many: Vec<String> = (0..=MAX_RECIPIENTS)
            .map(|i| format!("u{i}@contoso.com"))
            .collect();
        let d = Draft {
            to: many,
            subject: "x".into(),
            ..Draft::default()
        };
        assert_eq!(
            d.check(None, &Protected::default()),
            Err(MailError::TooManyRecipients(MAX_RECIPIENTS + 1))
        );
        let mut d = draft(&["ada@contoso.com"]);
        (d.body, d.body_file) = (Some("b".into()), Some("b.txt".into()));
        assert_eq!(
            d.check(None, &Protected::default()),
            Err(MailError::BodyTwice)
        );
        let mut d = draft(&["ada@contoso.com"]);
        d.key = Some("k\n".into());
        assert_eq!(d.check(None, &Protected::default()), Err(MailError::Key));
    }

    #[test]
    fn attachments_are_read_typed_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.csv"), b"a,b\n1,2\n").unwrap();
        std::fs::write(dir.path().join("big.bin"), vec![0u8; MAX_ATTACHMENT_BYTES]).unwrap();
        let mut d = draft(&["ada@contoso.com"]);
        d.attach = vec!["report.csv".into()];
        let m = d.check(Some(dir.path()), &Protected::default()).unwrap();
        assert_eq!(m.attachments[0].name, "report.csv");
        assert_eq!(m.attachments[0].content_type, "text/csv");
        let mut d = draft(&["ada@contoso.com"]);
        d.attach = vec!["report.csv".into(), "big.bin".into()];
        assert_eq!(
            d.check(Some(dir.path()), &Protected::default()),
            Err(MailError::AttachmentsTooLarge {
                total: MAX_ATTACHMENT_BYTES as u64 + 8
            })
        );
        let mut d = draft(&["ada@contoso.com"]);
        d.attach = vec!["missing.pdf".into()];
        let e = d
            .check(Some(dir.path()), &Protected::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pdf"), "{e}");
    }

    #[test]
    fn a_key_is_taken_once_per_batch_and_subjects_are_counted_as_exchange_does() {
        let batch = "{\"to\": \"a@contoso.com\", \"subject\": \"1\", \"key\": \"k\"}\n\
                     {\"to\": \"b@contoso.com\", \"subject\": \"2\", \"key\": \"K\"}\n\
                     {\"to\": \"c@contoso.com\", \"subject\": \"3\", \"key\": \"k\"}\n";
        assert_eq!(
            read_batch(batch, None, &Protected::default()),
            Err(MailError::KeyTwice {
                key: "k".into(),
                first: 1,
                second: 3
            })
        );
        // 255 UTF-16 units: 127 characters outside the BMP take two each.
        let mut d = draft(&["ada@contoso.com"]);
        d.subject = format!("{}x", "🙂".repeat(127));
        assert!(d.check(None, &Protected::default()).is_ok());
        let mut d = draft(&["ada@contoso.com"]);
        d.subject = "🙂".repeat(128);
        assert_eq!(
            d.check(None, &Protected::default()),
            Err(MailError::SubjectTooLong { length: 256 })
        );
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_names_the_bad_line() {
        let ok = "{\"to\": \"ada@contoso.com\", \"subject\": \"one\"}\n\n\
                  {\"to\": [\"bob@contoso.com\"], \"cc\": \"c@contoso.com\", \"body\": \"two\", \"key\": \"k2\"}\n";
        let mails = read_batch(ok, None, &Protected::default()).unwrap();
        assert_eq!(mails.len(), 2);
        assert_eq!(mails[1].cc, vec!["c@contoso.com"]);
        assert_eq!(mails[1].key.as_deref(), Some("k2"));
        let bad = format!("{ok}{{\"to\": \"nobody\", \"subject\": \"x\"}}\n");
        assert_eq!(
            read_batch(&bad, None, &Protected::default())
                .unwrap_err()
                .to_string(),
            "line 4: `nobody` is not an e-mail address"
        );
        let e = read_batch(
            "{\"to\": \"a@contoso.com\", \"subjekt\": \"x\"}",
            None,
            &Protected::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("line 1: not a mail object"),
            "{e}"
        );
    }
}
