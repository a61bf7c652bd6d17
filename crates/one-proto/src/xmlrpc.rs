//! XML-RPC codec that speaks exactly like OpenNebula's `oned`.
//!
//! `oned` uses the xmlrpc-c C library (Abyss server, its private Expat fork). The server half of
//! this module ([`parse_method_call`], [`write_response`]) reproduces that library's checks, its
//! fault texts and its serializer byte for byte: CRLF line ends, `<i4>`/`<i8>`, `& < >` escaped
//! and CR written as `&#x0d;`. The client half ([`write_method_call`], [`parse_response`]) uses
//! the same code, so a call written here is the call an xmlrpc-c client would send.
//!
//! Parsing is a single pass over the body with `quick-xml` into a flat element arena (no
//! allocation per element beyond the arena itself), followed by a walk that applies xmlrpc-c's
//! rules in xmlrpc-c's order, so that when a body has several defects the reported one is the
//! one `oned` would report. Value nesting is limited to 64 levels, like xmlrpc-c's default.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;

use base64::Engine as _;
use quick_xml::events::attributes::AttrError;
use quick_xml::events::Event;
use quick_xml::Reader;

/// xmlrpc-c's `XMLRPC_PARSE_ERROR`: every malformed call is answered with this code.
const PARSE_ERROR: i32 = -503;

/// xmlrpc-c's `XMLRPC_NESTING_LIMIT_DEFAULT`: `<value>` levels allowed in one parameter.
const MAX_NESTING: u32 = 64;

const PROLOGUE: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n";

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// One XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// 32-bit integer: `<i4>` or `<int>` (also `<i1>`, `<i2>`, as in xmlrpc-c); written as `<i4>`.
    Int(i32),
    /// 64-bit integer: `<i8>` (or Apache's `<ex:i8>`).
    I8(i64),
    /// `<boolean>`, whose text must be exactly `0` or `1`.
    Bool(bool),
    /// `<double>`.
    Double(f64),
    /// `<string>`, or a `<value>` with no type element (its text kept exactly, blanks included).
    String(String),
    /// `<dateTime.iso8601>`, holding the text as received. It is checked on parsing and
    /// written back in xmlrpc-c's form (`YYYYMMDDTHH:MM:SS[.uuuuuu]`) when it parses.
    DateTime(String),
    /// `<base64>`, decoded.
    Base64(Vec<u8>),
    /// `<array>`.
    Array(Vec<Value>),
    /// `<struct>`, members in document order. A repeated name replaces the earlier value in
    /// place, as in xmlrpc-c.
    Struct(Vec<(String, Value)>),
    /// `<nil/>` (or Apache's `<ex:nil/>`).
    Nil,
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i32> for Value {
    fn from(n: i32) -> Self {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl Value {
    /// The text of a [`Value::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number in a [`Value::Int`].
    pub fn as_i32(&self) -> Option<i32> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number in a [`Value::Int`] or a [`Value::I8`].
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(i64::from(*i)),
            Value::I8(i) => Some(*i),
            _ => None,
        }
    }

    /// The truth value of a [`Value::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items of a [`Value::Array`].
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The XML-RPC element name of this value's type, e.g. `"int"`, `"string"`, `"array"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::I8(_) => "i8",
            Value::Bool(_) => "boolean",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::DateTime(_) => "dateTime.iso8601",
            Value::Base64(_) => "base64",
            Value::Array(_) => "array",
            Value::Struct(_) => "struct",
            Value::Nil => "nil",
        }
    }
}

/// A decoded `<methodCall>`.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCall {
    /// The `<methodName>` text, exactly as sent (not trimmed, as in xmlrpc-c).
    pub method: String,
    /// The parameters in order.
    pub params: Vec<Value>,
}

/// A `<methodResponse>`: one value, or an XML-RPC fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `<params>` with exactly one `<param>`.
    Success(Value),
    /// `<fault>` with a `faultCode`/`faultString` struct.
    Fault {
        /// `faultCode`, e.g. -501, -503 or -506.
        code: i32,
        /// `faultString`.
        message: String,
    },
}

/// Why a call body was refused, as the XML-RPC fault xmlrpc-c would answer with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("XML-RPC fault {code}: {message}")]
pub struct CallError {
    /// The fault code; -503 for every malformed call.
    pub code: i32,
    /// The fault text, e.g.
    /// `Call XML not a proper XML-RPC call.  Call is not valid XML.  syntax error`.
    pub message: String,
}

impl CallError {
    fn parse(detail: String) -> Self {
        CallError {
            code: PARSE_ERROR,
            message: format!("Call XML not a proper XML-RPC call.  {detail}"),
        }
    }
}

impl From<CallError> for Response {
    /// The fault response that answers a refused call.
    fn from(e: CallError) -> Self {
        Response::Fault {
            code: e.code,
            message: e.message,
        }
    }
}

/// Why a response body could not be decoded (client side).
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The body is not well-formed XML; the text is the XML parser's complaint.
    #[error("XML-RPC response is not valid XML: {0}")]
    NotXml(String),
    /// Well-formed XML, but not a `<methodResponse>` of valid XML-RPC values.
    #[error("malformed XML-RPC response: {0}")]
    Malformed(String),
    /// A `<fault>` whose value is not a struct with an int `faultCode` and a string
    /// `faultString`.
    #[error("malformed XML-RPC fault: {0}")]
    BadFault(String),
}

// ---------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------

/// Decodes an XML-RPC call body (server side).
///
/// Errors carry code -503 and the text xmlrpc-c puts in the fault, e.g.
/// `Call XML not a proper XML-RPC call.  Call is not valid XML.  syntax error`.
pub fn parse_method_call(body: &[u8]) -> Result<MethodCall, CallError> {
    let mut tree =
        parse_xml(body).map_err(|m| CallError::parse(format!("Call is not valid XML.  {m}")))?;
    call_from_tree(&mut tree).map_err(CallError::parse)
}

/// Encodes a response exactly as xmlrpc-c's serializer does (server side).
pub fn write_response(resp: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(PROLOGUE);
    match resp {
        Response::Success(v) => {
            out.extend_from_slice(b"<methodResponse>\r\n<params>\r\n<param>");
            write_value(&mut out, v);
            out.extend_from_slice(b"</param>\r\n</params>\r\n</methodResponse>\r\n");
        }
        Response::Fault { code, message } => {
            // xmlrpc-c builds the fault as the struct {faultCode: i4, faultString: string}.
            out.extend_from_slice(
                b"<methodResponse>\r\n<fault>\r\n<value><struct>\r\n\
                  <member><name>faultCode</name>\r\n<value><i4>",
            );
            let _ = write!(out, "{code}");
            out.extend_from_slice(
                b"</i4></value></member>\r\n\
                  <member><name>faultString</name>\r\n<value><string>",
            );
            push_escaped(&mut out, message);
            out.extend_from_slice(
                b"</string></value></member>\r\n</struct></value>\r\n\
                  </fault>\r\n</methodResponse>\r\n",
            );
        }
    }
    out
}

/// Encodes a call the way an xmlrpc-c client does (client side).
pub fn write_method_call(method: &str, params: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(PROLOGUE);
    out.extend_from_slice(b"<methodCall>\r\n<methodName>");
    push_escaped(&mut out, method);
    out.extend_from_slice(b"</methodName>\r\n<params>\r\n");
    for p in params {
        out.extend_from_slice(b"<param>");
        write_value(&mut out, p);
        out.extend_from_slice(b"</param>\r\n");
    }
    out.extend_from_slice(b"</params>\r\n</methodCall>\r\n");
    out
}

/// Decodes a response body (client side). A `<fault>` is a successful decode that yields
/// [`Response::Fault`].
pub fn parse_response(body: &[u8]) -> Result<Response, ResponseError> {
    let mut tree = parse_xml(body).map_err(ResponseError::NotXml)?;
    response_from_tree(&mut tree)
}

// ---------------------------------------------------------------------------------------------
// Serializer
// ---------------------------------------------------------------------------------------------

fn write_value(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"<value>");
    match v {
        Value::Int(i) => {
            let _ = write!(out, "<i4>{i}</i4>");
        }
        Value::I8(i) => {
            let _ = write!(out, "<i8>{i}</i8>");
        }
        Value::Bool(b) => {
            out.extend_from_slice(if *b {
                b"<boolean>1</boolean>"
            } else {
                b"<boolean>0</boolean>"
            });
        }
        Value::Double(d) => {
            out.extend_from_slice(b"<double>");
            format_double(out, *d);
            out.extend_from_slice(b"</double>");
        }
        Value::String(s) => {
            out.extend_from_slice(b"<string>");
            push_escaped(out, s);
            out.extend_from_slice(b"</string>");
        }
        Value::DateTime(s) => {
            out.extend_from_slice(b"<dateTime.iso8601>");
            match parse_datetime(s) {
                Ok(dt) => dt.write(out),
                // Not representable in xmlrpc-c; send the caller's text rather than nothing.
                Err(_) => push_escaped(out, s),
            }
            out.extend_from_slice(b"</dateTime.iso8601>");
        }
        Value::Base64(bytes) => {
            // xmlrpc-c writes 76-character lines (57 input bytes), each ending in CRLF.
            out.extend_from_slice(b"<base64>\r\n");
            if bytes.is_empty() {
                out.extend_from_slice(b"\r\n");
            }
            let mut line = String::with_capacity(80);
            for chunk in bytes.chunks(57) {
                line.clear();
                base64::engine::general_purpose::STANDARD.encode_string(chunk, &mut line);
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"</base64>");
        }
        Value::Array(items) => {
            out.extend_from_slice(b"<array><data>\r\n");
            for item in items {
                write_value(out, item);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"</data></array>");
        }
        Value::Struct(members) => {
            out.extend_from_slice(b"<struct>\r\n");
            for (name, value) in members {
                out.extend_from_slice(b"<member><name>");
                push_escaped(out, name);
                out.extend_from_slice(b"</name>\r\n");
                write_value(out, value);
                out.extend_from_slice(b"</member>\r\n");
            }
            out.extend_from_slice(b"</struct>");
        }
        Value::Nil => out.extend_from_slice(b"<nil/>"),
    }
    out.extend_from_slice(b"</value>");
}

/// xmlrpc-c escapes only these four bytes; `"` and `'` go out as they are.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut done = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'\r' => b"&#x0d;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[done..i]);
        out.extend_from_slice(rep);
        done = i + 1;
    }
    out.extend_from_slice(&bytes[done..]);
}

/// Digits of a double exactly as `xmlrpc_formatFloat` produces them: plain decimal, no
/// exponent, with the library's own rounding toward short digit strings.
fn format_double(out: &mut Vec<u8>, value: f64) {
    if !value.is_finite() {
        // xmlrpc-c refuses these outright; there is no XML-RPC spelling, so use Python's.
        let text: &[u8] = if value.is_nan() {
            b"nan"
        } else if value > 0.0 {
            b"inf"
        } else {
            b"-inf"
        };
        out.extend_from_slice(text);
        return;
    }
    let abs = if value < 0.0 {
        out.push(b'-');
        -value
    } else {
        value
    };
    if abs >= 1.0 {
        let (whole, whole_precision) = float_whole(out, abs);
        if whole_precision < 1.0 {
            let fraction = abs - whole;
            if fraction > whole_precision {
                out.push(b'.');
                float_fraction_part(out, fraction, whole_precision);
            }
        }
    } else {
        out.push(b'0');
        if abs > 0.0 {
            out.push(b'.');
            float_fraction(out, abs);
        }
    }
}

/// The digit `arg` starts with, biased up by `precision`. The cast mimics C's
/// `(unsigned int)` of a double on x86-64, which wraps small negatives to a huge value.
fn lead_digit(arg: f64, precision: f64) -> u8 {
    let d = (arg + precision) as i64 as u32;
    d.min(9) as u8
}

/// Writes the digits before the point; returns the amount written and its uncertainty.
/// Recursion depth is at most 309 (one level per decimal digit of `f64::MAX`).
fn float_whole(out: &mut Vec<u8>, value: f64) -> (f64, f64) {
    if value < 1.0 {
        return (0.0, f64::EPSILON);
    }
    let (non_least, non_least_precision) = float_whole(out, value / 10.0);
    let least = if non_least_precision > 0.1 {
        0
    } else {
        lead_digit(value - non_least * 10.0, non_least_precision * 10.0)
    };
    out.push(b'0' + least);
    (
        non_least * 10.0 + f64::from(least),
        non_least_precision * 10.0,
    )
}

fn float_fraction_part(out: &mut Vec<u8>, value: f64, whole_precision: f64) {
    let mut d = value;
    let mut precision = whole_precision;
    while d > precision {
        d *= 10.0;
        let digit = lead_digit(d, precision);
        d -= f64::from(digit);
        out.push(b'0' + digit);
        precision *= 10.0;
    }
}

fn float_fraction(out: &mut Vec<u8>, value: f64) {
    let mut d = value * 10.0;
    while d < 1.0 {
        out.push(b'0');
        d *= 10.0;
    }
    let mut precision = f64::EPSILON;
    while d > precision {
        let digit = lead_digit(d, precision);
        out.push(b'0' + digit);
        d -= f64::from(digit);
        d *= 10.0;
        precision *= 10.0;
    }
}

// ---------------------------------------------------------------------------------------------
// XML layer: one pass of quick-xml events into a flat element arena
// ---------------------------------------------------------------------------------------------

const NONE: u32 = u32::MAX;

/// Character data of one element. Most elements hold zero or one text run, which is borrowed
/// from the body when it needs no entity or line-end rewriting.
enum Text<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl<'a> Text<'a> {
    fn push(&mut self, piece: Cow<'a, str>) {
        match self {
            Text::Borrowed("") => {
                *self = match piece {
                    Cow::Borrowed(p) => Text::Borrowed(p),
                    Cow::Owned(p) => Text::Owned(p),
                }
            }
            Text::Borrowed(s) => {
                let mut joined = String::with_capacity(s.len() + piece.len());
                joined.push_str(s);
                joined.push_str(&piece);
                *self = Text::Owned(joined);
            }
            Text::Owned(s) => s.push_str(&piece),
        }
    }

    fn take(&mut self) -> String {
        match std::mem::replace(self, Text::Borrowed("")) {
            Text::Borrowed(s) => s.to_owned(),
            Text::Owned(s) => s,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Owned(s) => s,
        }
    }
}

struct Node<'a> {
    /// Raw tag name, prefix included (xmlrpc-c does no namespace processing).
    name: &'a [u8],
    text: Text<'a>,
    first_child: u32,
    last_child: u32,
    next_sibling: u32,
    child_count: u32,
}

/// Element tree of a well-formed document; node 0 is the root.
struct Tree<'a> {
    nodes: Vec<Node<'a>>,
}

impl<'a> Tree<'a> {
    fn name(&self, i: u32) -> &'a [u8] {
        self.nodes[i as usize].name
    }

    fn shown(&self, i: u32) -> Cow<'a, str> {
        String::from_utf8_lossy(self.name(i))
    }

    fn first_child(&self, i: u32) -> u32 {
        self.nodes[i as usize].first_child
    }

    fn next_sibling(&self, i: u32) -> u32 {
        self.nodes[i as usize].next_sibling
    }

    fn child_count(&self, i: u32) -> u32 {
        self.nodes[i as usize].child_count
    }

    fn child_named(&self, parent: u32, name: &[u8]) -> Option<u32> {
        let mut c = self.first_child(parent);
        while c != NONE {
            if self.name(c) == name {
                return Some(c);
            }
            c = self.next_sibling(c);
        }
        None
    }

    fn take_text(&mut self, i: u32) -> String {
        self.nodes[i as usize].text.take()
    }

    fn text(&self, i: u32) -> &str {
        self.nodes[i as usize].text.as_str()
    }

    fn add(&mut self, name: &'a [u8], parent: Option<u32>) -> Result<u32, XmlFault> {
        // Indices are u32 with u32::MAX as "none"; only a body of many gigabytes gets here.
        let idx = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&i| i != NONE)
            .ok_or(XmlFault::NoMemory)?;
        self.nodes.push(Node {
            name,
            text: Text::Borrowed(""),
            first_child: NONE,
            last_child: NONE,
            next_sibling: NONE,
            child_count: 0,
        });
        if let Some(p) = parent {
            let last = self.nodes[p as usize].last_child;
            if last == NONE {
                self.nodes[p as usize].first_child = idx;
            } else {
                self.nodes[last as usize].next_sibling = idx;
            }
            let parent_node = &mut self.nodes[p as usize];
            parent_node.last_child = idx;
            parent_node.child_count = parent_node.child_count.saturating_add(1);
        }
        Ok(idx)
    }
}

/// Expat's error codes, for the messages xmlrpc-c passes on.
#[derive(Clone, Copy)]
enum XmlFault {
    NoMemory,
    Syntax,
    NoElements,
    /// Bytes from the token's start to the offending byte.
    InvalidToken(usize),
    UnclosedToken,
    TagMismatch,
    DuplicateAttribute,
    JunkAfterRoot,
    UndefinedEntity,
    BadCharRef,
    MisplacedXmlPi,
    UnclosedCdata,
}

impl XmlFault {
    fn text(self) -> &'static str {
        match self {
            XmlFault::NoMemory => "out of memory",
            XmlFault::Syntax => "syntax error",
            XmlFault::NoElements => "no element found",
            XmlFault::InvalidToken(_) => "not well-formed",
            XmlFault::UnclosedToken => "unclosed token",
            XmlFault::TagMismatch => "mismatched tag",
            XmlFault::DuplicateAttribute => "duplicate attribute",
            XmlFault::JunkAfterRoot => "junk after document element",
            XmlFault::UndefinedEntity => "undefined entity",
            XmlFault::BadCharRef => "reference to invalid character number",
            XmlFault::MisplacedXmlPi => {
                "xml processing instruction not at start of external entity"
            }
            XmlFault::UnclosedCdata => "unclosed CDATA section",
        }
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Prolog,
    Content,
    /// After the root closed; holds where the closing tag started.
    Epilog(usize),
}

/// Formats an Expat failure as xmlrpc-c's Expat fork reports it. Before the root element the
/// bare message is used; inside it, the fork names the failing token with up to 40 bytes of
/// input; after it, the token named is the root's closing tag (the epilog is checked while
/// that tag is processed).
fn xml_fail(input: &[u8], phase: Phase, token_start: usize, fault: XmlFault) -> String {
    let (start, detail) = match phase {
        Phase::Prolog => return fault.text().to_owned(),
        Phase::Content => match fault {
            XmlFault::InvalidToken(n) => {
                (token_start, format!("Invalid token, starting {n} bytes in"))
            }
            _ => (token_start, fault.text().to_owned()),
        },
        Phase::Epilog(root_end) => (root_end, fault.text().to_owned()),
    };
    let start = start.min(input.len());
    let end = (start + 40).min(input.len());
    format!(
        "Invalid XML \"content\".  Problem with token at '{}...': {}",
        printable(&input[start..end]),
        detail
    )
}

/// xmlrpc-c's `xmlrpc_makePrintable_lp`.
fn printable(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 8);
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x07 => s.push_str("\\a"),
            b'\r' => s.push_str("\\r"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => {
                let _ = std::fmt::Write::write_fmt(&mut s, format_args!("\\x{b:02x}"));
            }
        }
    }
    s
}

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'.' || b == b'-'
}

/// Offset of the first byte that cannot be part of an XML name, if any.
fn bad_name_byte(name: &[u8]) -> Option<usize> {
    match name.first() {
        None => return Some(0),
        Some(&b) if !is_name_start(b) => return Some(0),
        _ => {}
    }
    if let Some(i) = name.iter().position(|&b| !is_name_char(b)) {
        return Some(i);
    }
    if name.iter().any(|&b| b >= 0x80) {
        if let Err(e) = std::str::from_utf8(name) {
            return Some(e.valid_up_to());
        }
    }
    None
}

/// Parses the body into an element tree, or returns Expat's complaint as xmlrpc-c words it.
fn parse_xml(input: &[u8]) -> Result<Tree<'_>, String> {
    // quick-xml would drop a BOM silently but then count offsets from after it.
    let base = if input.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let mut reader = Reader::from_reader(&input[base..]);
    {
        let config = reader.config_mut();
        config.trim_text(false);
        config.check_end_names = false;
        config.allow_unmatched_ends = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
    }
    let mut tree = Tree {
        nodes: Vec::with_capacity(32),
    };
    let mut stack: Vec<u32> = Vec::with_capacity(16);
    let mut phase = Phase::Prolog;
    let fail = |phase, at, fault| Err(xml_fail(input, phase, at, fault));
    // Expat hands the root start tag to its content scanner as soon as it sees `<` and a name
    // character, so faults inside that tag are reported in the content form.
    let tag_phase = |phase: Phase, at: usize| match phase {
        Phase::Prolog if input.get(at + 1).is_some_and(|&b| is_name_start(b)) => Phase::Content,
        _ => phase,
    };

    loop {
        let start = base + reader.buffer_position() as usize;
        let event = reader.read_event();
        let end = (base + reader.buffer_position() as usize).min(input.len());
        let event = match event {
            Ok(ev) => ev,
            Err(e) => {
                let phase = tag_phase(phase, start);
                return fail(phase, start, quick_xml_fault(&e, phase));
            }
        };
        match (phase, event) {
            (_, Event::Eof) => {
                return match phase {
                    Phase::Epilog(_) => Ok(tree),
                    _ => fail(phase, input.len(), XmlFault::NoElements),
                };
            }
            (Phase::Content, Event::Text(_)) => {
                let Some(&top) = stack.last() else {
                    return fail(phase, start, XmlFault::Syntax);
                };
                let raw = &input[start.min(end)..end];
                let text =
                    decode_text(raw).map_err(|(at, f)| xml_fail(input, phase, start + at, f))?;
                tree.nodes[top as usize].text.push(text);
            }
            (Phase::Content, Event::CData(_)) => {
                let Some(&top) = stack.last() else {
                    return fail(phase, start, XmlFault::Syntax);
                };
                let raw = input
                    .get(start + 9..end.saturating_sub(3))
                    .ok_or_else(|| xml_fail(input, phase, start, XmlFault::UnclosedCdata))?;
                let text = decode_cdata(raw).map_err(|f| xml_fail(input, phase, start, f))?;
                tree.nodes[top as usize].text.push(text);
            }
            (Phase::Content | Phase::Prolog, Event::Start(e)) => {
                let idx = check_start(input, start, &e)
                    .and_then(|name| tree.add(name, stack.last().copied()))
                    .map_err(|f| xml_fail(input, tag_phase(phase, start), start, f))?;
                stack.push(idx);
                phase = Phase::Content;
            }
            (Phase::Content | Phase::Prolog, Event::Empty(e)) => {
                check_start(input, start, &e)
                    .and_then(|name| tree.add(name, stack.last().copied()))
                    .map_err(|f| xml_fail(input, tag_phase(phase, start), start, f))?;
                phase = if stack.is_empty() {
                    Phase::Epilog(start)
                } else {
                    Phase::Content
                };
            }
            (Phase::Content, Event::End(e)) => {
                let Some(top) = stack.pop() else {
                    return fail(phase, start, XmlFault::Syntax);
                };
                if e.name().as_ref() != tree.name(top) {
                    return fail(phase, start, XmlFault::TagMismatch);
                }
                if stack.is_empty() {
                    phase = Phase::Epilog(start);
                }
            }
            (_, Event::Comment(_) | Event::PI(_)) => {}
            (Phase::Content, Event::Decl(_)) => {
                return fail(phase, start, XmlFault::MisplacedXmlPi);
            }
            (Phase::Content, Event::DocType(_)) => {
                return fail(phase, start, XmlFault::InvalidToken(2));
            }
            (Phase::Prolog, Event::Decl(_)) => {
                if start != base {
                    return fail(phase, start, XmlFault::MisplacedXmlPi);
                }
            }
            (Phase::Prolog, Event::DocType(_)) => {}
            (Phase::Prolog, Event::Text(_)) => {
                if !input[start.min(end)..end].iter().all(|&b| is_xml_space(b)) {
                    return fail(phase, start, XmlFault::Syntax);
                }
            }
            (Phase::Prolog, _) => return fail(phase, start, XmlFault::Syntax),
            (Phase::Epilog(_), Event::Text(_)) => {
                if !input[start.min(end)..end].iter().all(|&b| is_xml_space(b)) {
                    return fail(phase, start, XmlFault::JunkAfterRoot);
                }
            }
            (Phase::Epilog(_), _) => return fail(phase, start, XmlFault::JunkAfterRoot),
        }
    }
}

/// Checks a start tag's name and attributes; returns the name as a slice of the body.
fn check_start<'a>(
    input: &'a [u8],
    start: usize,
    e: &quick_xml::events::BytesStart<'_>,
) -> Result<&'a [u8], XmlFault> {
    let name_len = e.name().as_ref().len();
    let name = input
        .get(start + 1..start + 1 + name_len)
        .ok_or(XmlFault::InvalidToken(0))?;
    if let Some(bad) = bad_name_byte(name) {
        return Err(XmlFault::InvalidToken(bad + 1));
    }
    for attr in e.attributes() {
        if let Err(err) = attr {
            return Err(match err {
                AttrError::Duplicated(..) => XmlFault::DuplicateAttribute,
                _ => XmlFault::InvalidToken(0),
            });
        }
    }
    Ok(name)
}

fn quick_xml_fault(e: &quick_xml::Error, phase: Phase) -> XmlFault {
    use quick_xml::errors::{IllFormedError, SyntaxError};
    match e {
        quick_xml::Error::Syntax(SyntaxError::UnclosedCData) => match phase {
            Phase::Content => XmlFault::UnclosedCdata,
            _ => XmlFault::UnclosedToken,
        },
        quick_xml::Error::Syntax(SyntaxError::InvalidBangMarkup) => XmlFault::InvalidToken(2),
        quick_xml::Error::Syntax(_) => XmlFault::UnclosedToken,
        quick_xml::Error::IllFormed(IllFormedError::MissingDeclVersion(_)) => XmlFault::Syntax,
        _ => XmlFault::InvalidToken(0),
    }
}

/// Where Expat's data token containing byte `upto` begins: data is split into tokens at line
/// ends and at entity or character references.
fn data_token_start(raw: &[u8], upto: usize) -> usize {
    let mut tok = 0;
    let mut i = 0;
    while i < upto {
        match raw[i] {
            b'\n' | b'\r' => tok = i + 1,
            b'&' => match raw[i..upto].iter().position(|&b| b == b';') {
                Some(p) => {
                    i += p;
                    tok = i + 1;
                }
                None => return i,
            },
            _ => {}
        }
        i += 1;
    }
    tok
}

/// Character data as Expat delivers it: references replaced, CRLF and lone CR turned into LF.
/// On error returns the offset (in `raw`) of the failing token and the fault.
fn decode_text(raw: &[u8]) -> Result<Cow<'_, str>, (usize, XmlFault)> {
    let s = match std::str::from_utf8(raw) {
        Ok(s) => s,
        Err(e) => {
            let bad = e.valid_up_to();
            let tok = data_token_start(raw, bad);
            return Err((tok, XmlFault::InvalidToken(bad - tok)));
        }
    };
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut tok = 0;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\n' => {
                i += 1;
                tok = i;
            }
            b'\r' => {
                let o = out.get_or_insert_with(|| String::with_capacity(raw.len()));
                o.push_str(&s[copied..i]);
                o.push('\n');
                i += if raw.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                copied = i;
                tok = i;
            }
            b'&' => {
                let (ch, next) = parse_reference(raw, i).map_err(|f| (i, f))?;
                let o = out.get_or_insert_with(|| String::with_capacity(raw.len()));
                o.push_str(&s[copied..i]);
                o.push(ch);
                i = next;
                copied = i;
                tok = i;
            }
            b'\t' => i += 1,
            b if b < 0x20 => return Err((tok, XmlFault::InvalidToken(i - tok))),
            b']' if raw[i..].starts_with(b"]]>") => {
                return Err((tok, XmlFault::InvalidToken(i + 2 - tok)));
            }
            // U+FFFE and U+FFFF are not XML characters.
            0xEF if raw[i..].starts_with(b"\xEF\xBF\xBE")
                || raw[i..].starts_with(b"\xEF\xBF\xBF") =>
            {
                return Err((tok, XmlFault::InvalidToken(i - tok)));
            }
            _ => i += 1,
        }
    }
    Ok(match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
    })
}

/// Decodes `&...;` starting at `raw[at]`; returns the character and the offset after `;`.
fn parse_reference(raw: &[u8], at: usize) -> Result<(char, usize), XmlFault> {
    let invalid = |i: usize| XmlFault::InvalidToken(i - at);
    let mut i = at + 1;
    if raw.get(i) == Some(&b'#') {
        i += 1;
        let hex = raw.get(i) == Some(&b'x');
        if hex {
            i += 1;
        }
        let digits_start = i;
        let mut n: u32 = 0;
        loop {
            let Some(&b) = raw.get(i) else {
                return Err(invalid(i));
            };
            let digit = match b {
                b';' if i > digits_start => break,
                b'0'..=b'9' => u32::from(b - b'0'),
                b'a'..=b'f' if hex => u32::from(b - b'a' + 10),
                b'A'..=b'F' if hex => u32::from(b - b'A' + 10),
                _ => return Err(invalid(i)),
            };
            // Saturate: anything this large is rejected below anyway.
            n = n
                .saturating_mul(if hex { 16 } else { 10 })
                .saturating_add(digit);
            i += 1;
        }
        let allowed =
            matches!(n, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x1_0000..=0x10_FFFF);
        return match char::from_u32(n) {
            Some(c) if allowed => Ok((c, i + 1)),
            _ => Err(XmlFault::BadCharRef),
        };
    }
    let name_start = i;
    match raw.get(i) {
        Some(&b) if is_name_start(b) => i += 1,
        _ => return Err(invalid(i)),
    }
    loop {
        match raw.get(i) {
            Some(b';') => break,
            Some(&b) if is_name_char(b) => i += 1,
            _ => return Err(invalid(i)),
        }
    }
    let c = match &raw[name_start..i] {
        b"amp" => '&',
        b"lt" => '<',
        b"gt" => '>',
        b"quot" => '"',
        b"apos" => '\'',
        _ => return Err(XmlFault::UndefinedEntity),
    };
    Ok((c, i + 1))
}

/// A CDATA section's content: taken literally except for line ends.
fn decode_cdata(raw: &[u8]) -> Result<Cow<'_, str>, XmlFault> {
    let s = std::str::from_utf8(raw).map_err(|e| XmlFault::InvalidToken(e.valid_up_to()))?;
    if let Some(i) = raw
        .iter()
        .position(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return Err(XmlFault::InvalidToken(i));
    }
    if !raw.contains(&b'\r') {
        return Ok(Cow::Borrowed(s));
    }
    Ok(Cow::Owned(s.replace("\r\n", "\n").replace('\r', "\n")))
}

// ---------------------------------------------------------------------------------------------
// XML-RPC layer: xmlrpc-c's checks, in its order, with its texts
// ---------------------------------------------------------------------------------------------

fn call_from_tree(t: &mut Tree<'_>) -> Result<MethodCall, String> {
    let root = 0;
    if t.name(root) != b"methodCall" {
        return Err(format!(
            "XML-RPC call should be a <methodCall> element.  Instead, we have a <{}> element.",
            t.shown(root)
        ));
    }
    let name_el = t
        .child_named(root, b"methodName")
        .ok_or("Expected <methodCall> to have child <methodName>")?;
    if t.child_count(name_el) > 0 {
        return Err(format!(
            "A <methodName> element should not have children.  This one has {} of them.",
            t.child_count(name_el)
        ));
    }
    let method = t.take_text(name_el);
    let count = t.child_count(root);
    // xmlrpc-c decides by child count, not by looking for <params> (a Ruby client quirk).
    let params = if count > 1 {
        let p = t
            .child_named(root, b"params")
            .ok_or("Expected <methodCall> to have child <params>")?;
        parse_params(t, p)?
    } else {
        Vec::new()
    };
    if count > 2 {
        return Err(format!(
            "<methodCall> has extraneous children, other than <methodName> and <params>.  \
             Total child count = {count}"
        ));
    }
    Ok(MethodCall { method, params })
}

fn response_from_tree(t: &mut Tree<'_>) -> Result<Response, ResponseError> {
    let root = 0;
    let malformed = |m: String| ResponseError::Malformed(m);
    if t.name(root) != b"methodResponse" {
        return Err(malformed(format!(
            "XML-RPC response must consist of a <methodResponse> element.  \
             This has a <{}> instead.",
            t.shown(root)
        )));
    }
    if t.child_count(root) != 1 {
        return Err(malformed(format!(
            "<methodResponse> has {} children, should have 1.",
            t.child_count(root)
        )));
    }
    let child = t.first_child(root);
    match t.name(child) {
        b"params" => {
            let mut params = parse_params(t, child).map_err(malformed)?;
            if params.len() != 1 {
                return Err(malformed(format!(
                    "Contains {} items.  It should have 1.",
                    params.len()
                )));
            }
            Ok(Response::Success(params.pop().unwrap_or(Value::Nil)))
        }
        b"fault" => {
            if t.child_count(child) != 1 {
                return Err(malformed(format!(
                    "<fault> element should have 1 child, but it has {}.",
                    t.child_count(child)
                )));
            }
            let v = t.first_child(child);
            if t.name(v) != b"value" {
                return Err(malformed(format!(
                    "<fault> contains a <{}> element.  Only <value> makes sense.",
                    t.shown(v)
                )));
            }
            let value = parse_value(t, v, MAX_NESTING).map_err(malformed)?;
            fault_from_value(value)
        }
        _ => Err(malformed(format!(
            "<methodResponse> must contain <params> or <fault>, but contains <{}>.",
            t.shown(child)
        ))),
    }
}

fn fault_from_value(value: Value) -> Result<Response, ResponseError> {
    let Value::Struct(members) = value else {
        return Err(ResponseError::BadFault(
            "<value> element of <fault> response is not of structure type".to_owned(),
        ));
    };
    let member = |key: &str| {
        members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                ResponseError::BadFault(format!(
                    "Invalid struct for <fault> value.  No member of struct has key '{key}'"
                ))
            })
    };
    let code_value = member("faultCode")?;
    let code = code_value
        .as_i64()
        .and_then(|c| i32::try_from(c).ok())
        .ok_or_else(|| {
            ResponseError::BadFault(format!(
                "Invalid struct for <fault> value.  Invalid value for 'faultCode' member.  \
                 Value of type {} supplied where type int was expected.",
                code_value.type_name()
            ))
        })?;
    let message_value = member("faultString")?;
    let message = message_value.as_str().ok_or_else(|| {
        ResponseError::BadFault(format!(
            "Invalid struct for <fault> value.  Invalid value for 'faultString' member.  \
             Value of type {} supplied where type string was expected.",
            message_value.type_name()
        ))
    })?;
    Ok(Response::Fault {
        code,
        message: message.to_owned(),
    })
}

fn parse_params(t: &mut Tree<'_>, params: u32) -> Result<Vec<Value>, String> {
    let mut out = Vec::with_capacity(t.child_count(params).min(64) as usize);
    let mut p = t.first_child(params);
    while p != NONE {
        if t.name(p) != b"param" {
            return Err(format!(
                "Expected element of type <param>, found <{}>",
                t.shown(p)
            ));
        }
        if t.child_count(p) != 1 {
            return Err(format!(
                "Expected <param> to have 1 children, found {}",
                t.child_count(p)
            ));
        }
        let v = t.first_child(p);
        if t.name(v) != b"value" {
            return Err(format!(
                "Expected element of type <value>, found <{}>",
                t.shown(v)
            ));
        }
        out.push(parse_value(t, v, MAX_NESTING)?);
        p = t.next_sibling(p);
    }
    Ok(out)
}

/// `max_nesting` counts down per level, so recursion never exceeds [`MAX_NESTING`] frames.
fn parse_value(t: &mut Tree<'_>, v: u32, max_nesting: u32) -> Result<Value, String> {
    if max_nesting < 1 {
        return Err("Nested data structure too deep.".to_owned());
    }
    if t.name(v) != b"value" {
        return Err(format!("<{}> element where <value> expected", t.shown(v)));
    }
    match t.child_count(v) {
        0 => Ok(Value::String(t.take_text(v))),
        1 => {
            let child = t.first_child(v);
            match t.name(child) {
                b"struct" => parse_struct(t, child, max_nesting),
                b"array" => parse_array(t, child, max_nesting),
                _ => parse_simple(t, child),
            }
        }
        n => Err(format!(
            "<value> has {n} child elements.  Only zero or one make sense."
        )),
    }
}

fn parse_array(t: &mut Tree<'_>, array: u32, max_nesting: u32) -> Result<Value, String> {
    if t.child_count(array) != 1 {
        return Err(format!(
            "<array> element has {} children.  Only one <data> makes sense.",
            t.child_count(array)
        ));
    }
    let data = t.first_child(array);
    if t.name(data) != b"data" {
        return Err(format!(
            "<array> element has <{}> child.  Only <data> makes sense.",
            t.shown(data)
        ));
    }
    let mut items = Vec::with_capacity(t.child_count(data).min(1024) as usize);
    let mut c = t.first_child(data);
    while c != NONE {
        if t.name(c) != b"value" {
            return Err(format!(
                "<data> element has <{}> child.  Only <value> makes sense.",
                t.shown(c)
            ));
        }
        items.push(parse_value(t, c, max_nesting - 1)?);
        c = t.next_sibling(c);
    }
    Ok(Value::Array(items))
}

/// Structs up to this size find repeated names by a linear scan; larger ones use an index so
/// a hostile body with many members stays linear.
const STRUCT_SCAN_LIMIT: usize = 16;

fn parse_struct(t: &mut Tree<'_>, st: u32, max_nesting: u32) -> Result<Value, String> {
    let mut members: Vec<(String, Value)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut m = t.first_child(st);
    while m != NONE {
        if t.name(m) != b"member" {
            return Err(format!(
                "<{}> element found where only <member> makes sense",
                t.shown(m)
            ));
        }
        if t.child_count(m) != 2 {
            return Err(format!(
                "<member> element has {} children.  Only one <name> and one <value> make sense.",
                t.child_count(m)
            ));
        }
        let name_el = t
            .child_named(m, b"name")
            .ok_or("<member> has no <name> child")?;
        if t.child_count(name_el) > 0 {
            return Err(format!(
                "<name> element has {} children.  Should have none.",
                t.child_count(name_el)
            ));
        }
        let key = t.take_text(name_el);
        let value_el = t
            .child_named(m, b"value")
            .ok_or("<member> has no <value> child")?;
        let value = parse_value(t, value_el, max_nesting - 1)?;

        let existing = if members.len() < STRUCT_SCAN_LIMIT {
            members.iter().position(|(k, _)| *k == key)
        } else {
            if index.is_empty() {
                index.extend(members.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)));
            }
            index.get(&key).copied()
        };
        match existing {
            Some(i) => members[i].1 = value,
            None => {
                if !index.is_empty() || members.len() + 1 > STRUCT_SCAN_LIMIT {
                    index.insert(key.clone(), members.len());
                }
                members.push((key, value));
            }
        }
        m = t.next_sibling(m);
    }
    Ok(Value::Struct(members))
}

fn parse_simple(t: &mut Tree<'_>, el: u32) -> Result<Value, String> {
    if t.child_count(el) > 0 {
        return Err(format!(
            "The child of a <value> element is neither <array> nor <struct>, \
             but has {} child elements of its own.",
            t.child_count(el)
        ));
    }
    match t.name(el) {
        b"int" | b"i4" | b"i1" | b"i2" | b"ex:i1" | b"ex:i2" => {
            parse_int(t.text(el)).map(Value::Int)
        }
        b"boolean" => match t.text(el) {
            "0" => Ok(Value::Bool(false)),
            "1" => Ok(Value::Bool(true)),
            other => Err(format!(
                "<boolean> XML element content must be either '0' or '1' according to \
                 XML-RPC.  This one has '{other}'"
            )),
        },
        b"double" => parse_double(t.text(el)).map(Value::Double),
        b"dateTime.iso8601" => {
            parse_datetime(t.text(el))?;
            Ok(Value::DateTime(t.take_text(el)))
        }
        b"string" => Ok(Value::String(t.take_text(el))),
        b"base64" => decode_base64(t.text(el).as_bytes()).map(Value::Base64),
        b"nil" | b"ex:nil" => Ok(Value::Nil),
        b"i8" | b"ex:i8" => parse_i8(t.text(el)).map(Value::I8),
        _ => Err(format!(
            "Unknown value type -- XML element is named <{}>",
            t.shown(el)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar decoding, with xmlrpc-c's acceptance rules and texts
// ---------------------------------------------------------------------------------------------

/// C's `isspace` in the C locale.
fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// C's `strtoll(s, &tail, 10)`: `None` for ERANGE, and the unparsed tail (the whole string
/// when there are no digits).
fn c_strtoll(s: &str) -> (Option<i64>, &str) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && c_isspace(b[i]) {
        i += 1;
    }
    let negative = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_start = i;
    let mut acc: Option<i64> = Some(0);
    while i < b.len() && b[i].is_ascii_digit() {
        let d = i64::from(b[i] - b'0');
        // Accumulate toward the sign so that i64::MIN is reachable.
        acc = acc.and_then(|a| a.checked_mul(10)).and_then(|a| {
            if negative {
                a.checked_sub(d)
            } else {
                a.checked_add(d)
            }
        });
        i += 1;
    }
    if i == digits_start {
        return (Some(0), s);
    }
    (acc, &s[i..])
}

fn parse_int(s: &str) -> Result<i32, String> {
    if s.is_empty() {
        return Err("<int> XML element content is empty".to_owned());
    }
    if c_isspace(s.as_bytes()[0]) {
        return Err(format!("<int> content '{s}' starts with white space"));
    }
    match c_strtoll(s) {
        (None, _) => Err(format!(
            "<int> XML element value '{s}' represents a number beyond the range that \
             XML-RPC allows ({} - {})",
            i32::MIN,
            i32::MAX
        )),
        (Some(i), _) if i < i64::from(i32::MIN) => Err(format!(
            "<int> value {i} is below the range allowed by XML-RPC (minimum is {})",
            i32::MIN
        )),
        (Some(i), _) if i > i64::from(i32::MAX) => Err(format!(
            "<int> value {i} is above the range allowed by XML-RPC (maximum is {})",
            i32::MAX
        )),
        (Some(_), tail) if !tail.is_empty() => Err(format!(
            "<int> value '{s}' contains non-numerical junk: '{tail}'"
        )),
        (Some(i), _) => i32::try_from(i).map_err(|e| e.to_string()),
    }
}

fn parse_i8(s: &str) -> Result<i64, String> {
    if s.is_empty() {
        return Err("<i8> XML element content is empty".to_owned());
    }
    if c_isspace(s.as_bytes()[0]) {
        return Err(format!("<i8> content '{s}' starts with white space"));
    }
    let why = match c_strtoll(s) {
        (Some(i), "") => return Ok(i),
        (None, _) => format!(
            "Number cannot be represented in 64 bits.  Must be in the range [{} - {}]",
            i64::MIN,
            i64::MAX
        ),
        (Some(_), tail) => format!("contains non-numerical junk: '{tail}'"),
    };
    Err(format!(
        "<i8> XML element value '{s}' is invalid because it does not represent \
         a 64 bit integer.  {why}"
    ))
}

fn parse_double(s: &str) -> Result<f64, String> {
    match xmlrpc_double(s) {
        Ok(v) => Ok(v),
        // Like xmlrpc-c, fall back to strtod for near-XML-RPC forms such as "3.4E6".
        Err(why) => strtod_whole(s).ok_or_else(|| {
            format!("<double> element value '{s}' is not a valid floating point number.  {why}")
        }),
    }
}

/// xmlrpc-c's own double reader, with its exact (not correctly rounded) arithmetic so that
/// values match `oned`'s bit for bit.
fn xmlrpc_double(s: &str) -> Result<f64, String> {
    let b = s.as_bytes();
    let m0 = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let mut point = None;
    for (i, &c) in b.iter().enumerate().skip(m0) {
        if c == b'.' {
            if point.is_some() {
                return Err("Two decimal points".to_owned());
            }
            point = Some(i);
        } else if !c.is_ascii_digit() {
            // Every earlier byte is ASCII, so `i` is a char boundary.
            return Err(format!(
                "Garbage (not sign, digit, or period) starting at '{}'",
                s.get(i..).unwrap_or_default()
            ));
        }
    }
    let (whole, fraction) = match point {
        Some(p) => (&b[m0..p], &b[p + 1..]),
        None => (&b[m0..], &b[b.len()..]),
    };
    if whole.is_empty() && fraction.is_empty() {
        return Err("No digits".to_owned());
    }
    let mut acc = 0.0_f64;
    for &d in whole {
        acc *= 10.0;
        acc += f64::from(d - b'0');
    }
    let mut significance = 0.1_f64;
    for &d in fraction {
        acc += f64::from(d - b'0') * significance;
        significance *= 0.1;
    }
    if acc > f64::MAX {
        return Err("Value exceeds the size allowed by XML-RPC".to_owned());
    }
    Ok(if b.first() == Some(&b'-') { -acc } else { acc })
}

/// `strtod` accepting only a string it consumes entirely and without ERANGE.
fn strtod_whole(s: &str) -> Option<f64> {
    let t = s.trim_start_matches(|c: char| c.is_ascii() && c_isspace(c as u8));
    if t.is_empty() {
        return None;
    }
    let v: f64 = t.parse().ok()?;
    let lower = t.to_ascii_lowercase();
    if v.is_infinite() && !lower.contains("inf") {
        return None;
    }
    let mantissa = lower.split('e').next().unwrap_or_default();
    let nonzero = mantissa.bytes().any(|c| (b'1'..=b'9').contains(&c));
    if (v == 0.0 || v.is_subnormal()) && nonzero && !lower.contains("nan") {
        return None;
    }
    Some(v)
}

/// xmlrpc-c's lenient base64 reader: ignores CR, LF, blanks and any non-alphabet byte, reads
/// only the low 7 bits of each byte, and counts `=` as a zero digit that is trimmed at the end.
fn decode_base64(s: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let mut left_bits = 0u32;
    let mut left_char = 0u32;
    let mut pads = 0usize;
    for &raw in s {
        let c = raw & 0x7f;
        let v = match c {
            b'\r' | b'\n' | b' ' => continue,
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pads += 1;
                0
            }
            _ => continue,
        };
        left_char = (left_char << 6) | u32::from(v);
        left_bits += 6;
        if left_bits >= 8 {
            left_bits -= 8;
            out.push((left_char >> left_bits) as u8);
            left_char &= (1 << left_bits) - 1;
        }
    }
    if left_bits != 0 {
        return Err("Incorrect Base64 padding".to_owned());
    }
    if pads > out.len() || pads > 2 {
        return Err("Malformed Base64 data".to_owned());
    }
    out.truncate(out.len() - pads);
    Ok(out)
}

/// A `<dateTime.iso8601>` as xmlrpc-c holds it.
struct DateTime {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    micro: u32,
}

impl DateTime {
    /// xmlrpc-c's output form: the year unpadded, microseconds only when nonzero.
    fn write(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "{}{:02}{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        if self.micro != 0 {
            let _ = write!(out, ".{:06}", self.micro);
        }
    }
}

/// Accepts the two forms xmlrpc-c's regular expressions accept (case-insensitively):
/// `YYYY[-]MM[-]DDTHH[:]MM[:]SS[.][digits][Z]` and `YYYY[-]MM[-]DDTHH[:]MM[:]SS(Z|+|-)[hh[mm]][Z]`
/// (the zone is ignored), then checks field ranges.
fn parse_datetime(s: &str) -> Result<DateTime, String> {
    let unrecognized =
        || format!("value '{s}' is not of any form we recognize for a <dateTime.iso8601> element");
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize, n: usize| -> Option<u32> {
        let run = b.get(*i..*i + n)?;
        if !run.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *i += n;
        Some(run.iter().fold(0, |a, &d| a * 10 + u32::from(d - b'0')))
    };
    let skip = |i: &mut usize, c: u8| {
        if b.get(*i).is_some_and(|x| x.eq_ignore_ascii_case(&c)) {
            *i += 1;
            true
        } else {
            false
        }
    };
    let head = (|| {
        let year = digits(&mut i, 4)?;
        skip(&mut i, b'-');
        let month = digits(&mut i, 2)?;
        skip(&mut i, b'-');
        let day = digits(&mut i, 2)?;
        if !skip(&mut i, b'T') {
            return None;
        }
        let hour = digits(&mut i, 2)?;
        skip(&mut i, b':');
        let minute = digits(&mut i, 2)?;
        skip(&mut i, b':');
        let second = digits(&mut i, 2)?;
        Some((year, month, day, hour, minute, second))
    })();
    let (year, month, day, hour, minute, second) = head.ok_or_else(unrecognized)?;
    let rest = &b[i..];

    let fraction_form = || -> Option<u32> {
        let mut j = usize::from(rest.first() == Some(&b'.'));
        let run_start = j;
        while rest.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        let run = &rest[run_start..j];
        if rest.get(j).is_some_and(|c| c.eq_ignore_ascii_case(&b'Z')) {
            j += 1;
        }
        if j != rest.len() {
            return None;
        }
        // Millionths: the first six digits, right-padded with zeros.
        Some((0..6).fold(0, |a, k| {
            a * 10 + run.get(k).map_or(0, |&d| u32::from(d - b'0'))
        }))
    };
    let zone_form = || -> bool {
        if !rest
            .first()
            .is_some_and(|&c| matches!(c, b'Z' | b'z' | b'+' | b'-'))
        {
            return false;
        }
        let mut j = 1;
        while rest.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if !matches!(j - 1, 0 | 2..=4) {
            return false;
        }
        if rest.get(j).is_some_and(|c| c.eq_ignore_ascii_case(&b'Z')) {
            j += 1;
        }
        j == rest.len()
    };
    let micro = match fraction_form() {
        Some(u) => u,
        None if zone_form() => 0,
        None => return Err(unrecognized()),
    };
    if !(1..=12).contains(&month) {
        return Err(format!(
            "Month of year value {month} is not in the range 1-12"
        ));
    }
    if !(1..=31).contains(&day) {
        return Err(format!("Day of month value {day} is not in the range 1-31"));
    }
    if hour > 23 {
        return Err(format!("Hour of day value {hour} is not in the range 0-23"));
    }
    if minute > 59 {
        return Err(format!(
            "Minute of hour value {minute} is not in the range 0-59"
        ));
    }
    if second > 59 {
        return Err(format!(
            "Second of minute value {second} is not in the range 0-59"
        ));
    }
    Ok(DateTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
        micro,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn samples_dir() -> PathBuf {
        let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/opennebula/samples");
        if beside.is_dir() {
            return beside;
        }
        let fixed = PathBuf::from("/work/shared/opennebula/samples");
        assert!(fixed.is_dir(), "sample transcripts not found");
        fixed
    }

    fn samples(suffix: &str) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(samples_dir())
            .expect("read samples dir")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                (name, std::fs::read(&p).expect("read sample"))
            })
            .collect();
        files.sort();
        assert!(files.len() >= 30, "expected the sample transcripts");
        files
    }

    fn call(body: &str) -> Result<MethodCall, CallError> {
        parse_method_call(body.as_bytes())
    }

    fn one_param(value_xml: &str) -> Result<Value, CallError> {
        let body = format!(
            "<?xml version='1.0'?>\n<methodCall>\n<methodName>m</methodName>\n<params>\n\
             <param>\n{value_xml}\n</param>\n</params>\n</methodCall>\n"
        );
        call(&body).map(|mut c| c.params.remove(0))
    }

    fn parse_fault(value_xml: &str) -> String {
        match one_param(value_xml) {
            Err(e) => {
                assert_eq!(e.code, -503);
                e.message
                    .strip_prefix("Call XML not a proper XML-RPC call.  ")
                    .expect("prefix")
                    .to_owned()
            }
            Ok(v) => panic!("expected a fault, got {v:?}"),
        }
    }

    #[test]
    fn every_sample_response_is_reproduced_byte_for_byte() {
        for (name, body) in samples(".response.xml") {
            let resp = parse_response(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = write_response(&resp);
            assert!(
                again == body,
                "{name} differs:\n{}\n---\n{}",
                String::from_utf8_lossy(&again),
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn every_sample_request_parses_and_the_not_xml_one_gives_oneds_fault() {
        for (name, body) in samples(".request.xml") {
            let parsed = parse_method_call(&body);
            if name.contains("fault-not-xml") {
                let resp_name = name.replace(".request.", ".response.");
                let resp = std::fs::read(samples_dir().join(resp_name)).expect("response");
                let expected = parse_response(&resp).expect("fault response");
                let err = parsed.expect_err("not xml must fail");
                assert_eq!(Response::from(err.clone()), expected);
                assert_eq!(write_response(&err.into()), resp);
                continue;
            }
            let c = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(c.method.starts_with("one."), "{name}: {}", c.method);
            let session = if name.contains("bad-session") {
                "nobody:wrong"
            } else {
                "oneadmin:PASSWORD"
            };
            assert_eq!(c.params[0].as_str(), Some(session), "{name}");
        }
    }

    #[test]
    fn sample_requests_decode_to_the_expected_params() {
        let dir = samples_dir();
        let read = |n: &str| std::fs::read(dir.join(n)).expect("sample");
        let c = parse_method_call(&read("05-vm-allocate-hold.request.xml")).expect("parse");
        assert_eq!(c.method, "one.vm.allocate");
        assert_eq!(c.params.len(), 3);
        let tmpl = c.params[1].as_str().expect("template");
        assert!(tmpl.starts_with("NAME=\"sample-vm\"\nMEMORY=\"512\"\n"));
        assert!(tmpl.ends_with("START_SCRIPT_BASE64=\"ZWNobyBoaQ==\" ]\n"));
        assert_eq!(c.params[2], Value::Bool(true));
        let c = parse_method_call(&read("12-vm-update-merge.request.xml")).expect("parse");
        assert_eq!(c.params[1], Value::Int(3));
        assert_eq!(c.params[2].as_str(), Some("READY=\"YES\"\nFOO=\"bar\""));
        assert_eq!(c.params[3], Value::Int(1));
        let c = parse_method_call(&read("07-vm-action-release.request.xml")).expect("parse");
        assert_eq!(c.params[1].as_str(), Some("release"));
    }

    #[test]
    fn sample_failure_array_decodes_with_an_i8_replication_index() {
        let body = std::fs::read(samples_dir().join("02-bad-session.response.xml")).expect("read");
        let Response::Success(v) = parse_response(&body).expect("parse") else {
            panic!("not a success envelope")
        };
        let items = v.as_array().expect("array");
        assert_eq!(items.len(), 5);
        assert_eq!(items[0].as_bool(), Some(false));
        assert_eq!(items[2].as_i32(), Some(256));
        assert_eq!(items[3].as_i64(), Some(-1));
        assert_eq!(items[4], Value::I8(-1));
        assert_eq!(items[4].as_i64(), Some(-1));
    }

    #[test]
    fn int_and_i4_both_give_int_and_i8_gives_i8() {
        assert_eq!(
            one_param("<value><int>42</int></value>").expect("int"),
            Value::Int(42)
        );
        assert_eq!(
            one_param("<value><i4>-7</i4></value>").expect("i4"),
            Value::Int(-7)
        );
        assert_eq!(
            one_param("<value><i4>+7</i4></value>").expect("i4"),
            Value::Int(7)
        );
        assert_eq!(
            one_param("<value><i8>-9223372036854775808</i8></value>").expect("i8"),
            Value::I8(i64::MIN)
        );
    }

    #[test]
    fn bad_integers_give_xmlrpc_c_texts() {
        assert_eq!(
            parse_fault("<value><int></int></value>"),
            "<int> XML element content is empty"
        );
        assert_eq!(
            parse_fault("<value><int> 1</int></value>"),
            "<int> content ' 1' starts with white space"
        );
        assert_eq!(
            parse_fault("<value><int>abc</int></value>"),
            "<int> value 'abc' contains non-numerical junk: 'abc'"
        );
        assert_eq!(
            parse_fault("<value><int>2147483648</int></value>"),
            "<int> value 2147483648 is above the range allowed by XML-RPC (maximum is 2147483647)"
        );
        assert_eq!(
            parse_fault("<value><i4>99999999999999999999x</i4></value>"),
            "<int> XML element value '99999999999999999999x' represents a number beyond the range \
             that XML-RPC allows (-2147483648 - 2147483647)"
        );
        assert_eq!(
            parse_fault("<value><i8>12z</i8></value>"),
            "<i8> XML element value '12z' is invalid because it does not represent a 64 bit \
             integer.  contains non-numerical junk: 'z'"
        );
    }

    #[test]
    fn boolean_accepts_only_zero_and_one() {
        assert_eq!(
            one_param("<value><boolean>0</boolean></value>").expect("0"),
            Value::Bool(false)
        );
        assert_eq!(
            parse_fault("<value><boolean>true</boolean></value>"),
            "<boolean> XML element content must be either '0' or '1' according to XML-RPC.  \
             This one has 'true'"
        );
        assert!(one_param("<value><boolean> 1</boolean></value>").is_err());
    }

    #[test]
    fn doubles_use_xmlrpc_c_arithmetic_and_strtod_fallback() {
        assert_eq!(
            one_param("<value><double>-1.5</double></value>").expect("d"),
            Value::Double(-1.5)
        );
        assert_eq!(
            one_param("<value><double>3.4E2</double></value>").expect("d"),
            Value::Double(340.0)
        );
        assert_eq!(
            parse_fault("<value><double>1.2.3</double></value>"),
            "<double> element value '1.2.3' is not a valid floating point number.  Two decimal points"
        );
        assert_eq!(
            parse_fault("<value><double></double></value>"),
            "<double> element value '' is not a valid floating point number.  No digits"
        );
    }

    #[test]
    fn doubles_are_written_like_xmlrpc_format_float() {
        let fmt = |d: f64| {
            let mut v = Vec::new();
            format_double(&mut v, d);
            String::from_utf8(v).expect("ascii")
        };
        assert_eq!(fmt(0.0), "0");
        assert_eq!(fmt(-0.0), "0");
        assert_eq!(fmt(1.0), "1");
        assert_eq!(fmt(100.0), "100");
        assert_eq!(fmt(0.5), "0.5");
        assert_eq!(fmt(0.1), "0.1");
        assert_eq!(fmt(3.25), "3.25");
        assert_eq!(fmt(-2.75), "-2.75");
        assert_eq!(fmt(0.001), "0.001");
        assert!(fmt(1e300).starts_with("1000000000"));
        assert!(!fmt(f64::MAX).contains('e'));
        assert!(fmt(f64::MIN_POSITIVE / 4.0).starts_with("0.000"));
    }

    #[test]
    fn datetime_is_checked_and_written_in_xmlrpc_c_form() {
        let v =
            one_param("<value><dateTime.iso8601>2024-01-02T03:04:05Z</dateTime.iso8601></value>")
                .expect("dt");
        assert_eq!(v, Value::DateTime("2024-01-02T03:04:05Z".into()));
        let out = String::from_utf8(write_response(&Response::Success(v))).expect("utf8");
        assert!(
            out.contains("<value><dateTime.iso8601>20240102T03:04:05</dateTime.iso8601></value>")
        );
        let v = Value::DateTime("20240102T03:04:05.25".into());
        let out = String::from_utf8(write_method_call("m", &[v])).expect("utf8");
        assert!(out.contains("20240102T03:04:05.250000<"));
        assert!(one_param(
            "<value><dateTime.iso8601>19980717T14:08:55+0100</dateTime.iso8601></value>"
        )
        .is_ok());
        assert_eq!(
            parse_fault("<value><dateTime.iso8601>20241302T03:04:05</dateTime.iso8601></value>"),
            "Month of year value 13 is not in the range 1-12"
        );
        assert_eq!(
            parse_fault("<value><dateTime.iso8601>yesterday</dateTime.iso8601></value>"),
            "value 'yesterday' is not of any form we recognize for a <dateTime.iso8601> element"
        );
    }

    #[test]
    fn base64_round_trips_with_xmlrpc_c_line_layout() {
        let data: Vec<u8> = (0..=255u8).collect();
        let out = write_method_call("m", &[Value::Base64(data.clone()), Value::Base64(vec![])]);
        let text = String::from_utf8(out.clone()).expect("ascii");
        let first_line = text
            .split("<base64>\r\n")
            .nth(1)
            .expect("b64")
            .split("\r\n")
            .next()
            .expect("line");
        assert_eq!(first_line.len(), 76);
        assert!(text.contains("<value><base64>\r\n\r\n</base64></value>"));
        let back = parse_method_call(&out).expect("parse");
        assert_eq!(
            back.params,
            vec![Value::Base64(data), Value::Base64(vec![])]
        );
        assert_eq!(
            one_param("<value><base64>aGk=\n</base64></value>").expect("b64"),
            Value::Base64(b"hi".to_vec())
        );
        assert_eq!(
            parse_fault("<value><base64>aGk</base64></value>"),
            "Incorrect Base64 padding"
        );
    }

    #[test]
    fn nil_struct_and_array_parse_with_whitespace_between_elements() {
        let v = one_param(
            "<value>\n <struct>\n  <member>\n   <name>a</name>\n   <value><nil/></value>\n  </member>\n \
             <member><value><array>\n<data>\n<value>x</value>\n<value><i4>1</i4></value>\n</data>\n</array></value>\
             <name>b</name></member>\n <member><name>a</name><value><i4>2</i4></value></member>\n </struct>\n</value>",
        )
        .expect("struct");
        assert_eq!(
            v,
            Value::Struct(vec![
                ("a".into(), Value::Int(2)),
                (
                    "b".into(),
                    Value::Array(vec![Value::String("x".into()), Value::Int(1)])
                ),
            ])
        );
    }

    #[test]
    fn large_structs_with_repeated_names_keep_first_position() {
        let mut body = String::from("<value><struct>");
        for i in 0..40 {
            body.push_str(&format!(
                "<member><name>k{}</name><value><i4>{i}</i4></value></member>",
                i % 30
            ));
        }
        body.push_str("</struct></value>");
        let Value::Struct(m) = one_param(&body).expect("struct") else {
            panic!("not a struct")
        };
        assert_eq!(m.len(), 30);
        assert_eq!(m[0], ("k0".into(), Value::Int(30)));
        assert_eq!(m[29], ("k29".into(), Value::Int(29)));
    }

    #[test]
    fn untyped_value_is_a_string_kept_exactly() {
        assert_eq!(
            one_param("<value>  two  words \n</value>").expect("v"),
            Value::String("  two  words \n".into())
        );
        assert_eq!(
            one_param("<value></value>").expect("v"),
            Value::String(String::new())
        );
        assert_eq!(
            one_param("<value/>").expect("v"),
            Value::String(String::new())
        );
    }

    #[test]
    fn entities_cdata_and_line_ends_decode_like_expat() {
        assert_eq!(
            one_param("<value><string>a&amp;b&lt;c&gt;d&quot;&apos;&#65;&#x42;\r\nz\rq&#x0d;</string></value>")
                .expect("v"),
            Value::String("a&b<c>d\"'AB\nz\nq\r".into())
        );
        assert_eq!(
            one_param("<value><string>x<![CDATA[<VM>&amp;</VM>]]>y<!-- c --></string></value>")
                .expect("v"),
            Value::String("x<VM>&amp;</VM>y".into())
        );
        assert_eq!(
            one_param("<value>\u{e9}\u{1F600}</value>").expect("v"),
            Value::String("\u{e9}\u{1F600}".into())
        );
    }

    #[test]
    fn strings_written_escape_only_amp_lt_gt_and_cr() {
        let out = write_response(&Response::Success(Value::String(
            "<a b='1\"'>&\r\n</a>".into(),
        )));
        let text = String::from_utf8(out).expect("utf8");
        assert!(text
            .contains("<value><string>&lt;a b='1\"'&gt;&amp;&#x0d;\n&lt;/a&gt;</string></value>"));
    }

    #[test]
    fn call_round_trips_through_writer_and_parser() {
        let params = vec![
            Value::String("oneadmin:pw & <x>\r".into()),
            Value::Int(-5),
            Value::I8(1 << 40),
            Value::Bool(true),
            Value::Double(0.25),
            Value::Nil,
            Value::Array(vec![Value::Struct(vec![(
                "k".into(),
                Value::String(String::new()),
            )])]),
        ];
        let body = write_method_call("one.vm.info", &params);
        assert!(body.starts_with(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<methodCall>\r\n<methodName>one.vm.info</methodName>\r\n<params>\r\n<param><value><string>"));
        let c = parse_method_call(&body).expect("parse");
        assert_eq!(
            c,
            MethodCall {
                method: "one.vm.info".into(),
                params
            }
        );
    }

    #[test]
    fn fault_response_matches_xmlrpc_c_layout() {
        let out = write_response(&Response::Fault {
            code: -506,
            message: "Method 'a<b' not defined".into(),
        });
        assert_eq!(
            out,
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<methodResponse>\r\n<fault>\r\n<value><struct>\r\n\
              <member><name>faultCode</name>\r\n<value><i4>-506</i4></value></member>\r\n\
              <member><name>faultString</name>\r\n<value><string>Method 'a&lt;b' not defined</string></value></member>\r\n\
              </struct></value>\r\n</fault>\r\n</methodResponse>\r\n"
                .to_vec()
        );
    }

    #[test]
    fn value_nesting_is_capped_at_64_levels() {
        let nest = |n: usize| {
            let mut s = String::new();
            for _ in 1..n {
                s.push_str("<value><array><data>");
            }
            s.push_str("<value><i4>1</i4></value>");
            for _ in 1..n {
                s.push_str("</data></array></value>");
            }
            s
        };
        assert!(one_param(&nest(64)).is_ok());
        assert_eq!(parse_fault(&nest(65)), "Nested data structure too deep.");
        assert_eq!(parse_fault(&nest(5000)), "Nested data structure too deep.");
    }

    #[test]
    fn very_deep_element_nesting_does_not_overflow_the_stack() {
        let n = 200_000;
        let body = format!(
            "<methodCall>{}{}</methodCall>",
            "<a>".repeat(n),
            "</a>".repeat(n)
        );
        let e = call(&body).expect_err("no methodName");
        assert_eq!(
            e.message,
            "Call XML not a proper XML-RPC call.  Expected <methodCall> to have child <methodName>"
        );
    }

    #[test]
    fn call_structure_errors_use_xmlrpc_c_texts() {
        let p = "Call XML not a proper XML-RPC call.  ";
        let msg = |b: &str| call(b).expect_err("must fail").message;
        assert_eq!(msg("<methodResponse/>"), format!("{p}XML-RPC call should be a <methodCall> element.  Instead, we have a <methodResponse> element."));
        assert_eq!(
            msg("<methodCall><params/></methodCall>"),
            format!("{p}Expected <methodCall> to have child <methodName>")
        );
        assert_eq!(
            msg("<methodCall><methodName>a<b/></methodName></methodCall>"),
            format!("{p}A <methodName> element should not have children.  This one has 1 of them.")
        );
        assert_eq!(
            msg("<methodCall><methodName>a</methodName><x/></methodCall>"),
            format!("{p}Expected <methodCall> to have child <params>")
        );
        assert_eq!(msg("<methodCall><methodName>a</methodName><params/><x/></methodCall>"), format!("{p}<methodCall> has extraneous children, other than <methodName> and <params>.  Total child count = 3"));
        assert_eq!(
            msg("<methodCall><methodName>a</methodName><params><p/></params></methodCall>"),
            format!("{p}Expected element of type <param>, found <p>")
        );
        assert_eq!(
            msg("<methodCall><methodName>a</methodName><params><param/></params></methodCall>"),
            format!("{p}Expected <param> to have 1 children, found 0")
        );
        assert_eq!(
            parse_fault("<value><float>1</float></value>"),
            "Unknown value type -- XML element is named <float>"
        );
        assert_eq!(
            parse_fault("<value><i4>1</i4><i4>2</i4></value>"),
            "<value> has 2 child elements.  Only zero or one make sense."
        );
        assert_eq!(parse_fault("<value><string><b/></string></value>"), "The child of a <value> element is neither <array> nor <struct>, but has 1 child elements of its own.");
        assert_eq!(
            parse_fault("<value><array></array></value>"),
            "<array> element has 0 children.  Only one <data> makes sense."
        );
        assert_eq!(
            parse_fault("<value><array><data><i4>1</i4></data></array></value>"),
            "<data> element has <i4> child.  Only <value> makes sense."
        );
        assert_eq!(
            parse_fault("<value><struct><m/></struct></value>"),
            "<m> element found where only <member> makes sense"
        );
        assert_eq!(
            parse_fault("<value><struct><member><name>a</name></member></struct></value>"),
            "<member> element has 1 children.  Only one <name> and one <value> make sense."
        );
        assert_eq!(
            parse_fault(
                "<value><struct><member><name>a</name><name>b</name></member></struct></value>"
            ),
            "<member> has no <value> child"
        );
    }

    #[test]
    fn call_without_params_and_with_spaced_method_name_is_kept_as_sent() {
        let c = call("<methodCall><methodName> one.x </methodName></methodCall>").expect("parse");
        assert_eq!(
            c,
            MethodCall {
                method: " one.x ".into(),
                params: vec![]
            }
        );
    }

    #[test]
    fn malformed_xml_gives_expat_texts() {
        let p = "Call XML not a proper XML-RPC call.  Call is not valid XML.  ";
        let msg = |b: &[u8]| parse_method_call(b).expect_err("must fail").message;
        assert_eq!(msg(b""), format!("{p}no element found"));
        assert_eq!(msg(b"   \n"), format!("{p}no element found"));
        assert_eq!(msg(b"this is not xml"), format!("{p}syntax error"));
        assert_eq!(
            msg(b"<methodCall><methodName>x</methodCall>"),
            format!("{p}Invalid XML \"content\".  Problem with token at '</methodCall>...': mismatched tag")
        );
        assert_eq!(
            msg(b"<methodCall></methodCall>\njunk"),
            format!("{p}Invalid XML \"content\".  Problem with token at '</methodCall>\\njunk...': junk after document element")
        );
        assert_eq!(
            msg(b"<a>&nope;</a>"),
            format!("{p}Invalid XML \"content\".  Problem with token at '&nope;</a>...': undefined entity")
        );
        assert_eq!(
            msg(b"<a>&#0;</a>"),
            format!("{p}Invalid XML \"content\".  Problem with token at '&#0;</a>...': reference to invalid character number")
        );
        assert_eq!(
            msg(b"<a>"),
            format!("{p}Invalid XML \"content\".  Problem with token at '...': no element found")
        );
        assert_eq!(
            msg(b"<a>x\xff</a>"),
            format!("{p}Invalid XML \"content\".  Problem with token at 'x\\xff</a>...': Invalid token, starting 1 bytes in")
        );
        assert!(msg(b"<a><b").ends_with("'<b...': unclosed token"));
        assert_eq!(
            msg(b"<methodCall"),
            format!("{p}Invalid XML \"content\".  Problem with token at '<methodCall...': unclosed token")
        );
        assert_eq!(msg(b"< methodCall/>"), format!("{p}not well-formed"));
        assert!(msg(b"<a b='1' b='2'/>").ends_with("duplicate attribute"));
    }

    #[test]
    fn byte_order_mark_and_xml_declaration_are_accepted() {
        let body = b"\xEF\xBB\xBF<?xml version=\"1.0\"?><methodCall><methodName>m</methodName></methodCall>";
        assert_eq!(parse_method_call(body).expect("parse").method, "m");
    }

    #[test]
    fn truncated_or_corrupted_bodies_never_panic() {
        for (_, body) in samples(".request.xml") {
            for cut in 0..body.len() {
                let _ = parse_method_call(&body[..cut]);
                let mut flipped = body.clone();
                flipped[cut] ^= 0x2a;
                let _ = parse_method_call(&flipped);
            }
        }
        let resp =
            std::fs::read(samples_dir().join("05-vm-allocate-hold.response.xml")).expect("read");
        for cut in 0..resp.len() {
            let _ = parse_response(&resp[..cut]);
        }
    }

    #[test]
    fn response_errors_name_what_was_malformed() {
        assert!(matches!(
            parse_response(b"nope"),
            Err(ResponseError::NotXml(_))
        ));
        assert!(matches!(
            parse_response(b"<methodCall/>"),
            Err(ResponseError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(b"<methodResponse><params></params></methodResponse>"),
            Err(ResponseError::Malformed(m)) if m == "Contains 0 items.  It should have 1."
        ));
        assert!(matches!(
            parse_response(
                b"<methodResponse><fault><value><i4>1</i4></value></fault></methodResponse>"
            ),
            Err(ResponseError::BadFault(_))
        ));
        assert!(matches!(
            parse_response(b"<methodResponse><fault><value><struct><member><name>faultCode</name><value><i4>1</i4></value></member></struct></value></fault></methodResponse>"),
            Err(ResponseError::BadFault(m)) if m.contains("faultString")
        ));
    }

    #[test]
    fn accessors_and_type_names_match_variants() {
        assert_eq!(Value::Int(3).as_i64(), Some(3));
        assert_eq!(Value::I8(3).as_i32(), None);
        assert_eq!(Value::String("s".into()).as_str(), Some("s"));
        assert_eq!(Value::Nil.as_str(), None);
        assert_eq!(Value::Array(vec![]).as_array(), Some(&[][..]));
        assert_eq!(Value::Bool(true).type_name(), "boolean");
        assert_eq!(
            Value::DateTime(String::new()).type_name(),
            "dateTime.iso8601"
        );
        assert_eq!(Value::Struct(vec![]).type_name(), "struct");
    }
}
