//! Messages the proxy writes itself (auth, errors, ReadyForQuery, ...), encoded with pgwire, and
//! the small decoders it needs (password messages, error fields).

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;

use super::frame::cstr;

fn put<M: Message>(buf: &mut BytesMut, m: M) {
    // Encoding our own well-formed messages into a growable buffer cannot fail.
    let _ = m.encode(buf);
}

/// A client-visible error: SQLSTATE, message and optional hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// ERROR or FATAL.
    pub severity: &'static str,
    /// Five-character SQLSTATE.
    pub code: &'static str,
    /// Primary message.
    pub message: String,
    /// Optional hint.
    pub hint: Option<String>,
}

impl PgError {
    /// An ERROR: the client keeps its connection.
    pub fn error(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: "ERROR",
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// A FATAL: the connection is closed after it.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: "FATAL",
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    /// Whose fault it is and whether a retry is safe (from its SQLSTATE).
    pub fn class(&self) -> super::ErrorClass {
        super::ErrorClass::of(self.code)
    }

    /// Appends the ErrorResponse to `buf`: the one place a proxy-made error becomes bytes
    /// (and is counted in the log with its class).
    pub fn encode(&self, buf: &mut BytesMut) {
        super::PROXY_ERRORS.count(self.code.as_bytes());
        let class = self.class();
        tracing::debug!(
            code = self.code,
            severity = self.severity,
            fault = class.fault.name(),
            retry_safe = class.retry_safe,
            "proxy error answered"
        );
        let mut fields = vec![
            (b'S', self.severity.to_string()),
            (b'V', self.severity.to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(h) = &self.hint {
            fields.push((b'H', h.clone()));
        }
        put(buf, ErrorResponse::new(fields));
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// Appends ReadyForQuery with the given status byte.
pub fn ready_for_query(buf: &mut BytesMut, status: super::TxStatus) {
    let status = match status {
        super::TxStatus::InTransaction => TransactionStatus::Transaction,
        super::TxStatus::Failed => TransactionStatus::Error,
        super::TxStatus::Idle => TransactionStatus::Idle,
    };
    put(buf, ReadyForQuery::new(status));
}

/// Appends AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    put(buf, Authentication::Ok);
}

/// Appends AuthenticationMD5Password with a salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    put(buf, Authentication::MD5Password(salt.to_vec()));
}

/// Appends AuthenticationSASL offering the given mechanisms.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    put(
        buf,
        Authentication::SASL(mechanisms.iter().map(|s| s.to_string()).collect()),
    );
}

/// Appends AuthenticationSASLContinue.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: Vec<u8>) {
    put(buf, Authentication::SASLContinue(data.into()));
}

/// Appends AuthenticationSASLFinal.
pub fn auth_sasl_final(buf: &mut BytesMut, data: Vec<u8>) {
    put(buf, Authentication::SASLFinal(data.into()));
}

/// Appends ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put(buf, ParameterStatus::new(name.into(), value.into()));
}

/// Appends BackendKeyData (protocol 3.0 form: a 4-byte secret).
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    put(buf, BackendKeyData::new(pid, SecretKey::I32(secret)));
}

/// A decoded client 'p' message; which kind it is depends on the authentication state.
/// `Debug` shows only which kind it is.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordMessage {
    /// PasswordMessage (cleartext or md5 response).
    Password(String),
    /// SASLInitialResponse: mechanism and client-first-message.
    SaslInitial(String, Vec<u8>),
    /// SASLResponse: client-final-message.
    Sasl(Vec<u8>),
}

impl std::fmt::Debug for PasswordMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordMessage::Password(_) => f.write_str("Password(<redacted>)"),
            PasswordMessage::SaslInitial(m, _) => write!(f, "SaslInitial({m:?}, <redacted>)"),
            PasswordMessage::Sasl(_) => f.write_str("Sasl(<redacted>)"),
        }
    }
}

/// What kind of 'p' message the authentication state expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordKind {
    /// After AuthenticationMD5Password / CleartextPassword.
    Password,
    /// After AuthenticationSASL.
    SaslInitial,
    /// After AuthenticationSASLContinue.
    Sasl,
}

/// Decodes a whole 'p' frame (tag and length included).
///
/// Checked decoding, as PostgreSQL's `auth.c` does it: the length field must match the frame,
/// a password is one NUL-terminated string filling the body, a SASLInitialResponse's data
/// length must be -1 or exactly what remains. Anything else is `None`, never a panic.
pub fn decode_password(frame: &[u8], kind: PasswordKind) -> Option<PasswordMessage> {
    let body = super::whole_body(frame, b'p').ok()?;
    match kind {
        PasswordKind::Password => {
            let mut b = body;
            let p = cstr(&mut b)?;
            b.is_empty()
                .then(|| PasswordMessage::Password(p.to_string()))
        }
        PasswordKind::SaslInitial => {
            let mut b = body;
            let mechanism = cstr(&mut b)?;
            let (n, data) = b.split_first_chunk::<4>()?;
            let data = match i32::from_be_bytes(*n) {
                -1 if data.is_empty() => &[][..],
                n if usize::try_from(n).ok() == Some(data.len()) => data,
                _ => return None,
            };
            Some(PasswordMessage::SaslInitial(
                mechanism.to_string(),
                data.to_vec(),
            ))
        }
        PasswordKind::Sasl => Some(PasswordMessage::Sasl(body.to_vec())),
    }
}

/// Appends CommandComplete with a tag such as `SET` or `SELECT 1`.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let len = 4 + tag.len() + 1;
    buf.reserve(1 + len);
    buf.extend_from_slice(b"C");
    buf.extend_from_slice(&(len as i32).to_be_bytes());
    buf.extend_from_slice(tag.as_bytes());
    buf.extend_from_slice(&[0]);
}

/// Appends the answer to `SHOW name` without ReadyForQuery: a one-column text RowDescription,
/// one DataRow and CommandComplete `SHOW`.
pub fn show_result(buf: &mut BytesMut, name: &str, value: &str) {
    // RowDescription: 1 field; table oid 0, column 0, type text (25), size -1, modifier -1,
    // text format.
    let len = 4 + 2 + name.len() + 1 + 4 + 2 + 4 + 2 + 4 + 2;
    buf.extend_from_slice(b"T");
    buf.extend_from_slice(&(len as i32).to_be_bytes());
    buf.extend_from_slice(&1i16.to_be_bytes());
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(&[0]);
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&0i16.to_be_bytes());
    buf.extend_from_slice(&25i32.to_be_bytes());
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf.extend_from_slice(&(-1i32).to_be_bytes());
    buf.extend_from_slice(&0i16.to_be_bytes());
    let len = 4 + 2 + 4 + value.len();
    buf.extend_from_slice(b"D");
    buf.extend_from_slice(&(len as i32).to_be_bytes());
    buf.extend_from_slice(&1i16.to_be_bytes());
    buf.extend_from_slice(&(value.len() as i32).to_be_bytes());
    buf.extend_from_slice(value.as_bytes());
    command_complete(buf, "SHOW");
}

/// Each (field type, value) of an ErrorResponse/NoticeResponse body, until `f` returns
/// something.
fn find_error_field<'a, T>(
    body: &'a [u8],
    mut f: impl FnMut(u8, &'a str) -> Option<T>,
) -> Option<T> {
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        rest = tail;
        let v = cstr(&mut rest)?;
        if let Some(found) = f(t, v) {
            return Some(found);
        }
    }
    None
}

/// The SQLSTATE (`C` field) of an ErrorResponse body ("" if it has none).
pub fn error_code(body: &[u8]) -> &str {
    find_error_field(body, |t, v| (t == b'C').then_some(v)).unwrap_or("")
}

/// The severity (`S` field) of an ErrorResponse body, e.g. `FATAL`.
pub fn error_severity(body: &[u8]) -> &str {
    find_error_field(body, |t, v| (t == b'S').then_some(v)).unwrap_or("")
}

/// Fields of a server ErrorResponse/NoticeResponse body: (code, message).
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    find_error_field(body, |t, v| {
        match t {
            b'C' => code = v.to_string(),
            b'M' => message = v.to_string(),
            _ => {}
        }
        None::<()>
    });
    (code, message)
}

/// Extracts the SQL text of a Query ('Q') body.
pub fn query_text(body: &[u8]) -> &str {
    let end = memchr::memchr(0, body).unwrap_or(body.len());
    std::str::from_utf8(&body[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sqlstate;

    #[test]
    fn error_round_trips_through_field_decoder() {
        let mut b = BytesMut::new();
        PgError::error(sqlstate::INVALID_CATALOG, "database \"x\" does not exist").encode(&mut b);
        assert_eq!(b[0], b'E');
        let (code, msg) = error_fields(&b[5..]);
        assert_eq!(code, sqlstate::INVALID_CATALOG);
        assert_eq!(msg, "database \"x\" does not exist");
    }

    #[test]
    fn decodes_password_messages() {
        let mut f = vec![b'p'];
        f.extend_from_slice(&(4 + 7i32).to_be_bytes());
        f.extend_from_slice(b"secret\0");
        assert_eq!(
            decode_password(&f, PasswordKind::Password),
            Some(PasswordMessage::Password("secret".into()))
        );
        assert_eq!(decode_password(&f[..3], PasswordKind::Password), None);
    }
}
