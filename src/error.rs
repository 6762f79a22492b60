//! Error helpers shared by every module.

/// An error and its causes in one line (`outer: cause: root cause`), for logs, audit
/// rows and step reports.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
