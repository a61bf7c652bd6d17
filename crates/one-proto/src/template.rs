//! OpenNebula's VM template grammar: parsing (text and XML forms), rendering,
//! merging and the `$VAR` expansion oned applies to CONTEXT.
//!
//! The text form is parsed by emulating oned's flex lexer
//! (`src/parsers/template_parser.l`) rule by rule (longest match, earlier rule
//! on ties) and its bison automaton (`template_syntax.y`), so accepted inputs,
//! values and error texts (token names, line and column numbers) come out as
//! oned reports them. [`Template::parse`] also applies what
//! `Template::parse_str_or_xml` does afterwards: input starting with `<` is the
//! XML form, and every value is trimmed of surrounding whitespace.
//!
//! Rendering ([`quote_value`], [`Template::to_text`]) is the reverse and is a
//! security boundary: a rendered value always parses back as exactly itself,
//! or rendering is refused with [`UnrepresentableValue`].

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

// ---------------------------------------------------------------------------
// Data model
// ---------------------------------------------------------------------------

/// One template attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Attribute {
    /// `NAME = value`.
    Single {
        /// Attribute name, upper-cased as oned stores it.
        name: String,
        /// The value, without quotes or escapes.
        value: String,
    },
    /// `NAME = [ K1 = v1, K2 = "v 2" ]`.
    Vector {
        /// Attribute name, upper-cased as oned stores it.
        name: String,
        /// Sub-attributes in input order, each key once.
        pairs: Vec<(String, String)>,
    },
}

impl Attribute {
    /// The attribute's name.
    pub fn name(&self) -> &str {
        match self {
            Attribute::Single { name, .. } | Attribute::Vector { name, .. } => name,
        }
    }
}

/// A parsed template: attributes in input order (oned itself sorts them by
/// name; keeping input order lets a rendering round-trip exactly).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// The attributes; a name may repeat (e.g. several `DISK` vectors).
    pub attrs: Vec<Attribute>,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A template oned would reject. `Display` is oned's message text, without the
/// `[one.vm.allocate] ` style prefix the request layer adds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// bison's syntax error, e.g. `syntax error, unexpected $end, expecting
    /// EQUAL at line 1, columns 23:31`.
    #[error("Parse error: {message}")]
    Syntax {
        /// The message bison produced, location included.
        message: String,
    },
    /// The grammar aborts without a message: a top-level value whose line
    /// contains `]]>`.
    #[error("Parse error.")]
    Aborted,
    /// The XML form (input starting with `<`) is not well-formed.
    #[error("Parse error: XML Template malformed.")]
    XmlMalformed,
    /// The `$VAR` parser rejected a CONTEXT string; VM creation fails.
    #[error("Error parsing: {attribute}. {message}")]
    Context {
        /// The text that was parsed (for a whole vector, oned's marshalled form).
        attribute: String,
        /// bison's message, location included.
        message: String,
    },
    /// `CONTEXT = [ ]`: oned fails VM creation with an empty error text.
    #[error("")]
    EmptyContext,
}

/// Why a name or value cannot be written into a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrepresentable {
    /// oned reads templates as C strings, so a NUL would cut the text short.
    ContainsNul,
    /// `]]>` makes the lexer fail and would close oned's CDATA sections.
    ContainsCdataEnd,
    /// A character XML 1.0 forbids; oned would emit XML no client can read.
    InvalidXmlChar,
    /// oned trims values after parsing, so this whitespace would be lost.
    SurroundingWhitespace,
    /// A final backslash would escape the closing quote, and the value has
    /// characters that need quotes.
    TrailingBackslash,
    /// A name must match `[A-Za-z0-9_]+`.
    InvalidName,
    /// The parser upper-cases names and keys, so lower case would not survive.
    NotUpperCase,
    /// oned prefixes names starting with a digit with `ONE_`.
    LeadingDigit,
    /// A vector repeats a key; the parser would keep only the first value.
    DuplicateKey,
}

impl fmt::Display for Unrepresentable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unrepresentable::ContainsNul => "it contains a NUL character",
            Unrepresentable::ContainsCdataEnd => "it contains \"]]>\"",
            Unrepresentable::InvalidXmlChar => "it contains a character XML 1.0 forbids",
            Unrepresentable::SurroundingWhitespace => {
                "it starts or ends with whitespace, which oned trims"
            }
            Unrepresentable::TrailingBackslash => {
                "it ends in a backslash and needs quotes, so the backslash would escape the closing quote"
            }
            Unrepresentable::InvalidName => "a name must match [A-Za-z0-9_]+",
            Unrepresentable::NotUpperCase => "oned upper-cases names and keys",
            Unrepresentable::LeadingDigit => "oned prefixes names starting with a digit with ONE_",
            Unrepresentable::DuplicateKey => "the vector repeats this key",
        })
    }
}

/// A name or value the template grammar cannot carry unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot write {} into an OpenNebula template: {reason}", shorten(.value))]
pub struct UnrepresentableValue {
    /// The offending name, key or value.
    pub value: String,
    /// Why it was refused.
    pub reason: Unrepresentable,
}

/// Debug-quotes `s`, cut to a readable length so huge values do not flood logs.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
        None => format!("{s:?}"),
    }
}

fn refuse(value: &str, reason: Unrepresentable) -> UnrepresentableValue {
    UnrepresentableValue {
        value: value.to_string(),
        reason,
    }
}

// ---------------------------------------------------------------------------
// Template API
// ---------------------------------------------------------------------------

impl Template {
    /// Parses a template as oned's `Template::parse_str_or_xml` does: text
    /// that starts with `<` is the XML form `<TEMPLATE>...</TEMPLATE>`, anything
    /// else the text grammar. Values are trimmed of surrounding whitespace.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut attrs = if text.as_bytes().first() == Some(&b'<') {
            parse_xml(text)?
        } else {
            parse_text(until_nul(text.as_bytes()))?
        };
        for attr in &mut attrs {
            match attr {
                Attribute::Single { value, .. } => trim_in_place(value),
                Attribute::Vector { pairs, .. } => {
                    for (_, value) in pairs {
                        trim_in_place(value);
                    }
                }
            }
        }
        Ok(Template { attrs })
    }

    /// The value of the first single attribute called `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find_map(|a| match a {
            Attribute::Single { name: n, value } if n.eq_ignore_ascii_case(name) => {
                Some(value.as_str())
            }
            _ => None,
        })
    }

    /// The pairs of the first vector attribute called `name` (any case).
    pub fn vector(&self, name: &str) -> Option<&[(String, String)]> {
        self.attrs.iter().find_map(|a| match a {
            Attribute::Vector { name: n, pairs } if n.eq_ignore_ascii_case(name) => {
                Some(pairs.as_slice())
            }
            _ => None,
        })
    }

    /// `key` of the first vector called `name`; an exact key match wins over a
    /// case-insensitive one (the XML form keeps the case of keys).
    pub fn vector_get(&self, name: &str, key: &str) -> Option<&str> {
        let pairs = self.vector(name)?;
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .or_else(|| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)))
            .map(|(_, v)| v.as_str())
    }

    /// Replaces every attribute called `name` with one single attribute, at
    /// the place of the first one (or at the end). The name is upper-cased.
    pub fn set(&mut self, name: &str, value: &str) {
        let attr = Attribute::Single {
            name: name.to_ascii_uppercase(),
            value: value.to_string(),
        };
        self.replace_all(attr);
    }

    /// Replaces every attribute called `name` with one vector attribute. Name
    /// and keys are upper-cased and a repeated key keeps its first value, as
    /// the parser would do.
    pub fn set_vector(&mut self, name: &str, pairs: Vec<(String, String)>) {
        let mut seen = HashSet::new();
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect();
        let attr = Attribute::Vector {
            name: name.to_ascii_uppercase(),
            pairs,
        };
        self.replace_all(attr);
    }

    fn replace_all(&mut self, attr: Attribute) {
        let at = self
            .attrs
            .iter()
            .position(|a| a.name().eq_ignore_ascii_case(attr.name()));
        let name = attr.name().to_string();
        self.remove(&name);
        match at {
            Some(i) => self.attrs.insert(i.min(self.attrs.len()), attr),
            None => self.attrs.push(attr),
        }
    }

    /// Removes every attribute called `name` (any case); true if any was.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.attrs.len();
        self.attrs.retain(|a| !a.name().eq_ignore_ascii_case(name));
        self.attrs.len() != before
    }

    /// oned's `Template::merge` (`one.vm.update` type 1, the extra template of
    /// `one.template.instantiate`): every name present in `other` loses all
    /// its attributes here, then `other`'s attributes are appended, except
    /// empty vectors, so `X = [ ]` just removes `X`.
    pub fn merge(&mut self, other: &Template) {
        let names: HashSet<String> = other
            .attrs
            .iter()
            .map(|a| a.name().to_ascii_uppercase())
            .collect();
        self.attrs
            .retain(|a| !names.contains(&a.name().to_ascii_uppercase()));
        for attr in &other.attrs {
            if !matches!(attr, Attribute::Vector { pairs, .. } if pairs.is_empty()) {
                self.attrs.push(attr.clone());
            }
        }
    }

    /// Renders the template in the text grammar so that
    /// `Template::parse(&t.to_text()?) == Ok(t)`; refuses names, keys and
    /// values that would not come back unchanged.
    pub fn to_text(&self) -> Result<String, UnrepresentableValue> {
        let mut out = String::new();
        for attr in &self.attrs {
            out.push_str(&render_name(attr.name())?);
            match attr {
                Attribute::Single { value, .. } => {
                    out.push_str(" = ");
                    out.push_str(&quote_value(value)?);
                    out.push('\n');
                }
                Attribute::Vector { pairs, .. } if pairs.is_empty() => out.push_str(" = [ ]\n"),
                Attribute::Vector { pairs, .. } => {
                    out.push_str(" = [\n");
                    let mut seen = HashSet::new();
                    for (i, (key, value)) in pairs.iter().enumerate() {
                        check_name(key)?;
                        if !seen.insert(key.as_str()) {
                            return Err(refuse(key, Unrepresentable::DuplicateKey));
                        }
                        out.push_str("  ");
                        out.push_str(key);
                        out.push_str(" = ");
                        out.push_str(&quote_value(value)?);
                        out.push_str(if i + 1 == pairs.len() { " ]\n" } else { ",\n" });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// True if `name` matches `[A-Za-z0-9_]+`, the lexer's VARIABLE token.
pub fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_var_byte)
}

/// A valid name that the parser returns unchanged (upper case).
fn check_name(name: &str) -> Result<(), UnrepresentableValue> {
    if !is_valid_attribute_name(name) {
        return Err(refuse(name, Unrepresentable::InvalidName));
    }
    if name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(refuse(name, Unrepresentable::NotUpperCase));
    }
    Ok(())
}

/// A top-level name as text that oned's `Attribute` constructor maps back to
/// exactly `name`.
fn render_name(name: &str) -> Result<String, UnrepresentableValue> {
    check_name(name)?;
    if name.as_bytes()[0].is_ascii_digit() {
        return Err(refuse(name, Unrepresentable::LeadingDigit));
    }
    // oned prefixes names starting with an upper-case "XML" with ONE_, but
    // checks the case before upper-casing, so "xml" is left alone.
    match name.strip_prefix("XML") {
        Some(rest) => Ok(format!("xml{rest}")),
        None => Ok(name.to_string()),
    }
}

/// Renders one value as a template-grammar token that parses back to exactly
/// `value` (in a single attribute or a vector), or says why it cannot.
///
/// Values are double-quoted with `"` written as `\"`, the grammar's only
/// escape. A value ending in a backslash cannot be quoted (the backslash would
/// escape the closing quote), so it is written bare when it has no character
/// that needs quotes, and refused otherwise.
pub fn quote_value(value: &str) -> Result<String, UnrepresentableValue> {
    if value.contains('\0') {
        return Err(refuse(value, Unrepresentable::ContainsNul));
    }
    if value.contains("]]>") {
        return Err(refuse(value, Unrepresentable::ContainsCdataEnd));
    }
    if value.chars().any(|c| !is_xml_char(c)) {
        return Err(refuse(value, Unrepresentable::InvalidXmlChar));
    }
    if trim_c(value).len() != value.len() {
        return Err(refuse(value, Unrepresentable::SurroundingWhitespace));
    }
    if value.ends_with('\\') {
        // Bare tokens are unescaped too, so `\"` inside one would lose its backslash.
        let bare =
            value.bytes().all(is_string_byte) && !value.starts_with('"') && !value.contains("\\\"");
        return if bare {
            Ok(value.to_string())
        } else {
            Err(refuse(value, Unrepresentable::TrailingBackslash))
        };
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

// ---------------------------------------------------------------------------
// Shared lexer helpers
// ---------------------------------------------------------------------------

/// oned hands the parsers `c_str()`, so they stop at the first NUL.
fn until_nul(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == 0) {
        Some(p) => &s[..p],
        None => s,
    }
}

/// `isspace` in the C locale, which `one_util::trim` uses.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn trim_c(s: &str) -> &str {
    s.trim_matches(is_c_space)
}

fn trim_in_place(s: &mut String) {
    let t = trim_c(s);
    if t.len() != s.len() {
        *s = t.to_string();
    }
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// `[[:blank:]]`
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `[[:blank:]\n]`
fn is_blank_nl(b: u8) -> bool {
    is_blank(b) || b == b'\n'
}

/// `[[:alnum:]_]` (flex classes are ASCII).
fn is_var_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `[^=#[:blank:]\n,\[\]]`, the unquoted value characters.
fn is_string_byte(b: u8) -> bool {
    !matches!(b, b'=' | b'#' | b' ' | b'\t' | b'\n' | b',' | b'[' | b']')
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The bison location both lexers keep through their `YY_USER_ACTION`: every
/// matched rule (skipped blanks and echoed characters too) moves the columns
/// on, and columns are byte offsets from the start of the input plus one,
/// never reset at a newline. The line is flex's `yylineno`, which oned never
/// initialises for string buffers; a real oned reports it from 0.
#[derive(Clone, Copy)]
struct Loc {
    line: i64,
    first_line: i64,
    first_col: i64,
    last_col: i64,
}

impl Loc {
    fn new() -> Loc {
        // bison's initial yylloc
        Loc {
            line: 0,
            first_line: 1,
            first_col: 1,
            last_col: 1,
        }
    }

    /// `counts_lines` is flex's `yy_rule_can_match_eol` for the rule: its
    /// default (echo) rule does not count the newline it swallows.
    fn step(&mut self, text: &[u8], counts_lines: bool) {
        if counts_lines {
            let newlines = text.iter().filter(|&&b| b == b'\n').count();
            self.line = self.line.saturating_add(to_i64(newlines));
        }
        self.first_line = self.line;
        self.first_col = self.last_col;
        self.last_col = self.last_col.saturating_add(to_i64(text.len()));
    }

    fn syntax_error(&self, unexpected: &str, expecting: &str) -> String {
        format!(
            "syntax error, unexpected {unexpected}, expecting {expecting} at line {}, columns {}:{}",
            self.first_line, self.first_col, self.last_col
        )
    }
}

/// Picks flex's match: the longest, and the earliest rule among equals.
/// `cands` lists (rule, length) in rule order; length 0 means no match.
fn longest(cands: &[(u8, usize)]) -> (u8, usize) {
    let mut best = (0, 0);
    for &(rule, len) in cands {
        if len > best.1 {
            best = (rule, len);
        }
    }
    best
}

// ---------------------------------------------------------------------------
// Text form: lexer (template_parser.l)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    End,
    Equal,
    EqualEmpty,
    Comma,
    OBracket,
    CBracket,
    CData,
    Str(String),
    Var(String),
}

impl Tok {
    fn bison_name(&self) -> &'static str {
        match self {
            Tok::End => "$end",
            Tok::Equal => "EQUAL",
            Tok::EqualEmpty => "EQUAL_EMPTY",
            Tok::Comma => "COMMA",
            Tok::OBracket => "OBRACKET",
            Tok::CBracket => "CBRACKET",
            Tok::CData => "CCDATA",
            Tok::Str(_) => "STRING",
            Tok::Var(_) => "VARIABLE",
        }
    }
}

// Rule numbers as in template_parser.l; DEFAULT is flex's implicit echo rule.
const T_COMMENT: u8 = 1;
const T_BLANKS: u8 = 2;
const T_VARIABLE: u8 = 3;
const T_EQUAL: u8 = 4;
const T_EQUAL_EMPTY: u8 = 5;
const T_COMMA: u8 = 6;
const T_CBRACKET: u8 = 7;
const T_OBRACKET: u8 = 8;
const T_CDATA: u8 = 9;
const T_QUOTED: u8 = 10;
const T_STRING: u8 = 11;
const T_DEFAULT: u8 = 12;

struct TextLexer<'a> {
    s: &'a [u8],
    pos: usize,
    /// flex start condition VALUE (after `=`), else INITIAL.
    in_value: bool,
    loc: Loc,
    last_newline: Option<usize>,
    /// Cache (from, end) of a blank run, so echoing blanks one by one in
    /// VALUE does not rescan the run each time.
    blank_run: (usize, usize),
    /// Cache (end of line, start of the last `]]>` between the query point
    /// and the end of line) for the CDATA rule.
    cdata_line: Option<(usize, Option<usize>)>,
}

impl<'a> TextLexer<'a> {
    fn new(s: &'a [u8]) -> TextLexer<'a> {
        TextLexer {
            s,
            pos: 0,
            in_value: false,
            loc: Loc::new(),
            last_newline: s.iter().rposition(|&b| b == b'\n'),
            blank_run: (usize::MAX, usize::MAX),
            cdata_line: None,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.s.get(i).copied()
    }

    fn run(&self, from: usize, pred: fn(u8) -> bool) -> usize {
        let mut j = from;
        while self.at(j).is_some_and(pred) {
            j += 1;
        }
        j
    }

    fn blanks_end(&mut self, from: usize) -> usize {
        let (a, b) = self.blank_run;
        if a <= from && from <= b {
            return b;
        }
        let end = self.run(from, is_blank);
        self.blank_run = (from, end);
        end
    }

    /// `[[:blank:]]*#.*\n`
    fn comment_len(&mut self, i: usize) -> usize {
        let j = self.blanks_end(i);
        if self.at(j) != Some(b'#') || self.last_newline.is_none_or(|p| p <= j) {
            return 0;
        }
        let nl = self.run(j, |b| b != b'\n');
        nl + 1 - i
    }

    /// `[[:blank:]]*=[[:blank:]]*` and, with a newline after, the EQUAL_EMPTY form.
    fn equal_lens(&mut self, i: usize) -> (usize, usize) {
        let j = self.blanks_end(i);
        if self.at(j) != Some(b'=') {
            return (0, 0);
        }
        let k = self.run(j + 1, is_blank);
        let empty = if self.at(k) == Some(b'\n') {
            k + 1 - i
        } else {
            0
        };
        (k - i, empty)
    }

    /// `[[:blank:]\n]*C[[:blank:]\n]*`
    fn around_len(&self, i: usize, c: u8) -> usize {
        let j = self.run(i, is_blank_nl);
        if self.at(j) != Some(c) {
            return 0;
        }
        self.run(j + 1, is_blank_nl) - i
    }

    /// `<VALUE>[[:blank:]]*\[[[:blank:]\n]*`
    fn obracket_len(&mut self, i: usize) -> usize {
        let j = self.blanks_end(i);
        if self.at(j) != Some(b'[') {
            return 0;
        }
        self.run(j + 1, is_blank_nl) - i
    }

    /// `<VALUE>.*\]\]\>.*`: the rest of the line, if it holds `]]>`.
    fn cdata_len(&mut self, i: usize) -> usize {
        let (eol, last) = match self.cdata_line {
            Some((eol, last)) if i <= eol => (eol, last),
            _ => {
                let eol = self.run(i, |b| b != b'\n');
                let last = self
                    .s
                    .get(i..eol)
                    .and_then(|line| line.windows(3).rposition(|w| w == b"]]>"))
                    .map(|p| i + p);
                self.cdata_line = Some((eol, last));
                (eol, last)
            }
        };
        if last.is_some_and(|l| l >= i) {
            eol - i
        } else {
            0
        }
    }

    /// `<VALUE>\"([^\"]|"\\\"")*\"`: a `"` inside must follow a backslash,
    /// and the longest such string wins.
    fn quoted_len(&self, i: usize) -> usize {
        if self.at(i) != Some(b'"') {
            return 0;
        }
        let mut best = 0;
        let mut k = i + 1;
        while let Some(b) = self.at(k) {
            if b == b'"' {
                best = k + 1 - i;
                if !(k > i + 1 && self.at(k - 1) == Some(b'\\')) {
                    break;
                }
            }
            k += 1;
        }
        best
    }

    fn next(&mut self) -> Tok {
        loop {
            let i = self.pos;
            if i >= self.s.len() {
                return Tok::End;
            }
            let (rule, len) = if self.in_value {
                let cands = [
                    (T_OBRACKET, self.obracket_len(i)),
                    (T_CDATA, self.cdata_len(i)),
                    (T_QUOTED, self.quoted_len(i)),
                    (T_STRING, self.run(i, is_string_byte) - i),
                    (T_DEFAULT, 1),
                ];
                longest(&cands)
            } else {
                let (eq, eq_empty) = self.equal_lens(i);
                let cands = [
                    (T_COMMENT, self.comment_len(i)),
                    (T_BLANKS, self.run(i, is_blank_nl) - i),
                    (T_VARIABLE, self.run(i, is_var_byte) - i),
                    (T_EQUAL, eq),
                    (T_EQUAL_EMPTY, eq_empty),
                    (T_COMMA, self.around_len(i, b',')),
                    (T_CBRACKET, self.around_len(i, b']')),
                    (T_DEFAULT, 1),
                ];
                longest(&cands)
            };
            let end = (i + len).min(self.s.len());
            let text = &self.s[i..end];
            self.pos = end;
            let counts_lines = matches!(
                rule,
                T_COMMENT | T_BLANKS | T_EQUAL_EMPTY | T_COMMA | T_CBRACKET | T_OBRACKET | T_QUOTED
            );
            self.loc.step(text, counts_lines);
            match rule {
                T_VARIABLE => return Tok::Var(lossy(text)),
                T_EQUAL => {
                    self.in_value = true;
                    return Tok::Equal;
                }
                T_EQUAL_EMPTY => return Tok::EqualEmpty,
                T_COMMA => return Tok::Comma,
                T_CBRACKET => return Tok::CBracket,
                T_OBRACKET => {
                    self.in_value = false;
                    return Tok::OBracket;
                }
                T_CDATA => {
                    self.in_value = false;
                    return Tok::CData;
                }
                T_QUOTED => {
                    self.in_value = false;
                    let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or(&[]);
                    return Tok::Str(lossy(inner));
                }
                T_STRING => {
                    self.in_value = false;
                    return Tok::Str(lossy(text));
                }
                // comments, blanks and echoed characters are skipped
                _ => {}
            }
        }
    }

    fn error(&self, tok: &Tok, expecting: &str) -> TemplateError {
        TemplateError::Syntax {
            message: self.loc.syntax_error(tok.bison_name(), expecting),
        }
    }

    fn expect_equal(&mut self) -> Result<(), TemplateError> {
        match self.next() {
            Tok::Equal => Ok(()),
            t => Err(self.error(&t, "EQUAL")),
        }
    }

    fn expect_string(&mut self) -> Result<String, TemplateError> {
        match self.next() {
            Tok::Str(s) => Ok(unescape(&s)),
            t => Err(self.error(&t, "STRING")),
        }
    }
}

/// The grammar's only escape: `\"` becomes `"`, scanning left to right.
fn unescape(s: &str) -> String {
    s.replace("\\\"", "\"")
}

/// oned's `Attribute` constructor: upper-case, and prefix `ONE_` when the name
/// as written starts with neither a letter nor `_`, or with an upper-case `XML`.
fn fix_name(raw: &str) -> String {
    let upper = raw.to_ascii_uppercase();
    let b = raw.as_bytes();
    let bad_start = b
        .first()
        .is_some_and(|&c| !(c.is_ascii_alphabetic() || c == b'_'));
    if bad_start || b.starts_with(b"XML") {
        format!("ONE_{upper}")
    } else {
        upper
    }
}

// ---------------------------------------------------------------------------
// Text form: parser (template_syntax.y)
// ---------------------------------------------------------------------------
//
// A direct encoding of bison's automaton for the grammar. Each `expecting`
// list is what bison prints for the state the error is found in; in the
// states between attributes, default reductions leave only `$end`.

fn parse_text(input: &[u8]) -> Result<Vec<Attribute>, TemplateError> {
    let mut lx = TextLexer::new(input);
    let mut attrs = Vec::new();
    loop {
        let name = match lx.next() {
            Tok::End => return Ok(attrs),
            Tok::Var(name) => fix_name(&name),
            t => return Err(lx.error(&t, "$end")),
        };
        match lx.next() {
            Tok::Equal => {}
            Tok::EqualEmpty => {
                attrs.push(Attribute::Single {
                    name,
                    value: String::new(),
                });
                continue;
            }
            t => return Err(lx.error(&t, "EQUAL or EQUAL_EMPTY")),
        }
        match lx.next() {
            Tok::Str(v) => attrs.push(Attribute::Single {
                name,
                value: unescape(&v),
            }),
            // `VARIABLE EQUAL CCDATA { YYABORT; }`: no message at all
            Tok::CData => return Err(TemplateError::Aborted),
            Tok::OBracket => {
                let pairs = parse_vector_body(&mut lx)?;
                attrs.push(Attribute::Vector { name, pairs });
            }
            t => return Err(lx.error(&t, "OBRACKET or CCDATA or STRING")),
        }
    }
}

/// After `[`: `]`, or `K = v (, K = v)* ]`. Keys are upper-cased and a
/// repeated key keeps its first value (`std::map::insert`).
fn parse_vector_body(lx: &mut TextLexer<'_>) -> Result<Vec<(String, String)>, TemplateError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    let mut key = match lx.next() {
        Tok::CBracket => return Ok(pairs),
        Tok::Var(k) => k,
        t => return Err(lx.error(&t, "CBRACKET or VARIABLE")),
    };
    loop {
        lx.expect_equal()?;
        let value = lx.expect_string()?;
        let key_upper = key.to_ascii_uppercase();
        if seen.insert(key_upper.clone()) {
            pairs.push((key_upper, value));
        }
        match lx.next() {
            Tok::CBracket => return Ok(pairs),
            Tok::Comma => {}
            t => return Err(lx.error(&t, "COMMA or CBRACKET")),
        }
        key = match lx.next() {
            Tok::Var(k) => k,
            t => return Err(lx.error(&t, "VARIABLE")),
        };
    }
}

// ---------------------------------------------------------------------------
// XML form (Template::from_xml with libxml2)
// ---------------------------------------------------------------------------

enum XNode {
    Elem {
        name: String,
        children: Vec<XNode>,
    },
    Text(String),
    CData(String),
    /// Comments and processing instructions: they only count as children.
    Other,
}

/// libxml2's default nesting limit without XML_PARSE_HUGE.
const XML_MAX_DEPTH: usize = 256;

fn parse_xml(text: &str) -> Result<Vec<Attribute>, TemplateError> {
    let doc = text.replace("\r\n", "\n").replace('\r', "\n");
    if !doc.chars().all(is_xml_char) {
        return Err(TemplateError::XmlMalformed);
    }
    let root = XmlReader { s: &doc, pos: 0 }
        .document()
        .ok_or(TemplateError::XmlMalformed)?;
    Ok(rebuild_attributes(root))
}

/// `Template::rebuild_attributes`: an element with exactly one text or CDATA
/// child is a single attribute; one with element children is a vector whose
/// keys (case kept, last value wins) are the elements, from the first one on,
/// whose first child is text or CDATA. Anything else is dropped.
fn rebuild_attributes(root: Vec<XNode>) -> Vec<Attribute> {
    let mut attrs = Vec::new();
    for node in root {
        let XNode::Elem { name, children } = node else {
            continue;
        };
        if let [XNode::Text(v) | XNode::CData(v)] = children.as_slice() {
            attrs.push(Attribute::Single {
                name: fix_name(&name),
                value: v.clone(),
            });
            continue;
        }
        let Some(first) = children
            .iter()
            .position(|c| matches!(c, XNode::Elem { .. }))
        else {
            continue;
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for child in children.into_iter().skip(first) {
            let XNode::Elem {
                name: key,
                children,
            } = child
            else {
                continue;
            };
            if let Some(XNode::Text(v) | XNode::CData(v)) = children.into_iter().next() {
                match index.get(&key) {
                    Some(&i) => {
                        if let Some(pair) = pairs.get_mut(i) {
                            pair.1 = v;
                        }
                    }
                    None => {
                        index.insert(key.clone(), pairs.len());
                        pairs.push((key, v));
                    }
                }
            }
        }
        attrs.push(Attribute::Vector {
            name: fix_name(&name),
            pairs,
        });
    }
    attrs
}

/// A small well-formedness-checking XML reader, enough for templates: no DTDs
/// (refused), no namespaces (names are kept as written).
struct XmlReader<'a> {
    s: &'a str,
    pos: usize,
}

impl XmlReader<'_> {
    fn rest(&self) -> &str {
        self.s.get(self.pos..).unwrap_or("")
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.rest().starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        let n = self
            .rest()
            .bytes()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        self.pos += n;
        self.pos != start
    }

    /// Text up to `end`, consuming both.
    fn until(&mut self, end: &str) -> Option<String> {
        let rest = self.rest();
        let i = rest.find(end)?;
        let body = rest[..i].to_string();
        self.pos += i + end.len();
        Some(body)
    }

    fn name(&mut self) -> Option<String> {
        let rest = self.rest();
        let mut chars = rest.char_indices();
        let (_, first) = chars.next()?;
        if !is_name_start(first) {
            return None;
        }
        let end = chars
            .find(|&(_, c)| !is_name_char(c))
            .map_or(rest.len(), |(i, _)| i);
        let name = rest[..end].to_string();
        self.pos += end;
        Some(name)
    }

    fn document(mut self) -> Option<Vec<XNode>> {
        if self.rest().starts_with("<?xml") && self.rest()[5..].starts_with([' ', '\t', '\n', '?'])
        {
            self.pos += 5;
            self.xml_decl()?;
        }
        self.misc()?;
        let root = self.element()?;
        self.misc()?;
        if !self.rest().is_empty() {
            return None;
        }
        match root {
            XNode::Elem { children, .. } => Some(children),
            _ => None,
        }
    }

    /// The rest of `<?xml version="1.x" encoding="..." standalone="..."?>`.
    /// Only UTF-8 is accepted: the text is already decoded.
    fn xml_decl(&mut self) -> Option<()> {
        for (i, field) in ["version", "encoding", "standalone"]
            .into_iter()
            .enumerate()
        {
            let save = self.pos;
            if !self.skip_ws() || !self.eat(field) {
                self.pos = save;
                if i == 0 {
                    return None;
                }
                continue;
            }
            self.skip_ws();
            if !self.eat("=") {
                return None;
            }
            self.skip_ws();
            let quote = self
                .rest()
                .chars()
                .next()
                .filter(|&c| c == '"' || c == '\'')?;
            self.pos += 1;
            let value = self.until(if quote == '"' { "\"" } else { "'" })?;
            let ok = match field {
                "version" => value
                    .strip_prefix("1.")
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
                "encoding" => {
                    value.eq_ignore_ascii_case("UTF-8") || value.eq_ignore_ascii_case("UTF8")
                }
                _ => value == "yes" || value == "no",
            };
            if !ok {
                return None;
            }
        }
        self.skip_ws();
        self.eat("?>").then_some(())
    }

    /// Blanks, comments and processing instructions around the root.
    fn misc(&mut self) -> Option<()> {
        loop {
            self.skip_ws();
            if self.rest().starts_with("<!--") {
                self.comment()?;
            } else if self.rest().starts_with("<?") {
                self.pi()?;
            } else {
                return Some(());
            }
        }
    }

    fn comment(&mut self) -> Option<()> {
        self.pos += 4;
        let body = self.until("-->")?;
        (!body.contains("--") && !body.ends_with('-')).then_some(())
    }

    fn pi(&mut self) -> Option<()> {
        self.pos += 2;
        let target = self.name()?;
        if target.eq_ignore_ascii_case("xml") {
            return None;
        }
        if !self.eat("?>") {
            if !self.skip_ws() {
                return None;
            }
            self.until("?>")?;
        }
        Some(())
    }

    /// Parses one element (the cursor is on its `<`) iteratively, so deep
    /// nesting cannot overflow the stack.
    fn element(&mut self) -> Option<XNode> {
        let mut stack: Vec<(String, Vec<XNode>)> = Vec::new();
        let (name, empty) = self.start_tag()?;
        if empty {
            return Some(XNode::Elem {
                name,
                children: Vec::new(),
            });
        }
        stack.push((name, Vec::new()));
        loop {
            let rest = self.rest();
            let node = if rest.starts_with("</") {
                self.pos += 2;
                let name = self.name()?;
                self.skip_ws();
                if !self.eat(">") {
                    return None;
                }
                let (open, children) = stack.pop()?;
                if open != name {
                    return None;
                }
                let done = XNode::Elem { name, children };
                if stack.is_empty() {
                    return Some(done);
                }
                done
            } else if rest.starts_with("<![CDATA[") {
                self.pos += 9;
                XNode::CData(self.until("]]>")?)
            } else if rest.starts_with("<!--") {
                self.comment()?;
                XNode::Other
            } else if rest.starts_with("<?") {
                self.pi()?;
                XNode::Other
            } else if rest.starts_with('<') {
                let (name, empty) = self.start_tag()?;
                if !empty {
                    if stack.len() >= XML_MAX_DEPTH {
                        return None;
                    }
                    stack.push((name, Vec::new()));
                    continue;
                }
                XNode::Elem {
                    name,
                    children: Vec::new(),
                }
            } else if rest.is_empty() {
                return None;
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                let raw = &rest[..end];
                if raw.contains("]]>") {
                    return None;
                }
                let text = decode_entities(raw)?;
                self.pos += end;
                XNode::Text(text)
            };
            let (_, children) = stack.last_mut()?;
            // libxml2 merges adjacent text (and adjacent CDATA) into one node
            match (children.last_mut(), node) {
                (Some(XNode::Text(a)), XNode::Text(b))
                | (Some(XNode::CData(a)), XNode::CData(b)) => a.push_str(&b),
                (_, node) => children.push(node),
            }
        }
    }

    /// `<Name attrs... >` or `/>`; returns the name and whether it was empty.
    fn start_tag(&mut self) -> Option<(String, bool)> {
        if !self.eat("<") {
            return None;
        }
        let name = self.name()?;
        let mut seen = HashSet::new();
        loop {
            let had_ws = self.skip_ws();
            if self.eat(">") {
                return Some((name, false));
            }
            if self.eat("/>") {
                return Some((name, true));
            }
            if !had_ws {
                return None;
            }
            let attr = self.name()?;
            if !seen.insert(attr) {
                return None;
            }
            self.skip_ws();
            if !self.eat("=") {
                return None;
            }
            self.skip_ws();
            let quote = self
                .rest()
                .chars()
                .next()
                .filter(|&c| c == '"' || c == '\'')?;
            self.pos += 1;
            let value = self.until(if quote == '"' { "\"" } else { "'" })?;
            if value.contains('<') {
                return None;
            }
            decode_entities(&value)?;
        }
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic()
        || c == '_'
        || c == ':'
        || (c >= '\u{C0}' && c != '\u{D7}' && c != '\u{F7}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || c.is_ascii_digit() || c == '-' || c == '.' || c == '\u{B7}'
}

/// Resolves the predefined entities and character references; anything else
/// (or a bare `&`) is not well-formed.
fn decode_entities(raw: &str) -> Option<String> {
    if !raw.contains('&') {
        return Some(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';')?;
        let entity = &after[..semi];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return None;
                    }
                    u32::from_str_radix(hex, 16).ok()?
                } else if let Some(dec) = entity.strip_prefix('#') {
                    if dec.is_empty() || !dec.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    dec.parse::<u32>().ok()?
                } else {
                    return None;
                };
                char::from_u32(code).filter(|&c| is_xml_char(c))?
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

// ---------------------------------------------------------------------------
// `$` expansion in CONTEXT (vm_var_parser.l, vm_var_syntax.y)
// ---------------------------------------------------------------------------

/// A `$` reference found in a CONTEXT value, handed to the resolver. Names are
/// upper-cased as oned does; a filter value is passed as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarRef {
    /// `$NAME`, `$VMID`, `$UNAME`, ...: oned looks at NAME, UID, UNAME, GID,
    /// GNAME and TEMPLATE first, then the template, then the user template.
    Simple(String),
    /// `$USER[SSH_PUBLIC_KEY]`, `$NIC[IP, NIC_ID="0"]`, `$NETWORK[...]`.
    Attr {
        /// The vector (or USER, NETWORK, IMAGE).
        var: String,
        /// The sub-attribute wanted.
        attr: String,
        /// `KEY = "value"` selecting which vector, if given.
        filter: Option<(String, String)>,
    },
}

/// oned's `$VAR` expansion of one CONTEXT value (`parse_template_attribute`).
///
/// `$NAME`, `$NAME[ATTR]` and `$NAME[ATTR, KEY="value"]` are replaced by what
/// `resolve` returns, or by nothing when it returns `None` (oned's behaviour
/// for unknown names: `$HOME/x` becomes `/x`). `\$` is kept with its
/// backslash. A `$` not followed by a name (`$$`, `$(`, `${`, a final `$`)
/// is a syntax error, which makes oned fail VM creation.
///
/// oned runs the parser once over the whole marshalled CONTEXT vector (see
/// [`expand_context_vector`]); this function treats the value as one item of
/// it, except that error columns count from the start of the value. An empty
/// value expands to itself.
pub fn expand_context_value(
    value: &str,
    resolve: &dyn Fn(&VarRef) -> Option<String>,
) -> Result<String, TemplateError> {
    let input = until_nul(value.as_bytes());
    if input.is_empty() {
        return Ok(String::new());
    }
    // Inside the marshalled vector a value is followed by the separator, so
    // a final lone backslash pairs with it and stays.
    expand_bytes(input, true, resolve).map_err(|message| TemplateError::Context {
        attribute: lossy(input),
        message,
    })
}

/// The separator oned's `VectorAttribute::marshall` puts between `KEY=value`
/// items.
const MARSHALL_SEP: &str = "@^_^@";

/// oned's whole-vector CONTEXT expansion (`parse_context_variables`): the
/// vector is marshalled in key order as `K1=v1@^_^@K2=v2...`, the `$`
/// parser runs once over that text and the result is split again at `@^_^@`
/// and the first `=` of each item. Quirks kept: a value containing `@^_^@`
/// (before or after expansion) splits into extra keys, where the first value
/// of a key wins; an empty vector fails with an empty message.
pub fn expand_context_vector(
    pairs: &[(String, String)],
    resolve: &dyn Fn(&VarRef) -> Option<String>,
) -> Result<Vec<(String, String)>, TemplateError> {
    let mut sorted: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in pairs {
        sorted.entry(k.as_str()).or_insert(v.as_str());
    }
    if sorted.is_empty() {
        return Err(TemplateError::EmptyContext);
    }
    let marshalled = sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(MARSHALL_SEP);
    let expanded =
        expand_bytes(until_nul(marshalled.as_bytes()), false, resolve).map_err(|message| {
            TemplateError::Context {
                attribute: marshalled.clone(),
                message,
            }
        })?;
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for item in expanded.split(MARSHALL_SEP) {
        if let Some((k, v)) = item.split_once('=') {
            out.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    Ok(out.into_iter().collect())
}

#[derive(Debug, Clone, PartialEq)]
enum VTok {
    End,
    Equal,
    Comma,
    OBracket,
    CBracket,
    /// End of a variable; carries the character that ended it, if any.
    Eoa(Option<u8>),
    Str(String),
    Var(String),
    RStr(Vec<u8>),
}

impl VTok {
    fn bison_name(&self) -> &'static str {
        match self {
            VTok::End => "$end",
            VTok::Equal => "EQUAL",
            VTok::Comma => "COMMA",
            VTok::OBracket => "OBRACKET",
            VTok::CBracket => "CBRACKET",
            VTok::Eoa(_) => "EOA",
            VTok::Str(_) => "STRING",
            VTok::Var(_) => "VARIABLE",
            VTok::RStr(_) => "RSTRING",
        }
    }
}

// Rule numbers as in vm_var_parser.l.
const V_RSTRING: u8 = 1;
const V_DOLLAR: u8 = 2;
const V_EQUAL: u8 = 3;
const V_COMMA: u8 = 4;
const V_OBRACKET: u8 = 5;
const V_CBRACKET: u8 = 6;
const V_VARIABLE: u8 = 7;
const V_QUOTED: u8 = 8;
const V_ALNUM: u8 = 9;
const V_EOA_DOLLAR: u8 = 10;
const V_EOA_CHAR: u8 = 11;
const V_DEFAULT: u8 = 12;

#[derive(Clone, Copy, PartialEq)]
enum VState {
    Initial,
    Var,
    Value,
}

struct VarLexer<'a> {
    s: &'a [u8],
    pos: usize,
    state: VState,
    loc: Loc,
    /// Lex a final lone `\\` as if more text followed (oned's lexer drops it).
    keep_final_backslash: bool,
}

impl VarLexer<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        self.s.get(i).copied()
    }

    fn run(&self, from: usize, pred: fn(u8) -> bool) -> usize {
        let mut j = from;
        while self.at(j).is_some_and(pred) {
            j += 1;
        }
        j
    }

    /// `([^\$\\]|"\\\$"|\\[^\$])+`: a backslash always takes the next byte.
    fn rstring_len(&self, i: usize) -> usize {
        let mut j = i;
        while let Some(b) = self.at(j) {
            match b {
                b'$' => break,
                b'\\' if self.at(j + 1).is_some() => j += 2,
                b'\\' if self.keep_final_backslash => j += 1,
                b'\\' => break,
                _ => j += 1,
            }
        }
        j - i
    }

    /// `[[:blank:]]*C[[:blank:]]*` (`trailing`) or `[[:blank:]]*C`.
    fn blank_then(&self, i: usize, c: u8, trailing: bool) -> usize {
        let j = self.run(i, is_blank);
        if self.at(j) != Some(c) {
            return 0;
        }
        if trailing {
            self.run(j + 1, is_blank) - i
        } else {
            j + 1 - i
        }
    }

    fn next(&mut self) -> VTok {
        loop {
            let i = self.pos;
            let Some(b) = self.at(i) else {
                // `<VAR><<EOF>>` ends the variable; no YY_USER_ACTION at EOF
                if self.state == VState::Var {
                    self.state = VState::Initial;
                    return VTok::Eoa(None);
                }
                return VTok::End;
            };
            let (rule, len) = match self.state {
                VState::Initial if b == b'$' => (V_DOLLAR, 1),
                VState::Initial => match self.rstring_len(i) {
                    0 => (V_DEFAULT, 1),
                    n => (V_RSTRING, n),
                },
                VState::Var => {
                    let obracket = if b == b'[' {
                        self.run(i + 1, is_blank) - i
                    } else {
                        0
                    };
                    let cands = [
                        (V_EQUAL, self.blank_then(i, b'=', true)),
                        (V_COMMA, self.blank_then(i, b',', true)),
                        (V_OBRACKET, obracket),
                        (V_CBRACKET, self.blank_then(i, b']', false)),
                        (V_VARIABLE, self.run(i, is_var_byte) - i),
                        (V_EOA_DOLLAR, usize::from(b == b'$')),
                        (V_EOA_CHAR, usize::from(b != b'\n')),
                        (V_DEFAULT, 1),
                    ];
                    longest(&cands)
                }
                VState::Value => {
                    let quoted = if b == b'"' {
                        self.s
                            .get(i + 1..)
                            .and_then(|r| r.iter().position(|&c| c == b'"'))
                            .map_or(0, |p| p + 2)
                    } else {
                        0
                    };
                    let cands = [
                        (V_QUOTED, quoted),
                        (V_ALNUM, self.run(i, |c| c.is_ascii_alphanumeric()) - i),
                        (V_DEFAULT, 1),
                    ];
                    longest(&cands)
                }
            };
            let end = (i + len).min(self.s.len());
            let text = &self.s[i..end];
            self.pos = end;
            self.loc.step(text, matches!(rule, V_RSTRING | V_QUOTED));
            match rule {
                V_RSTRING => return VTok::RStr(text.to_vec()),
                V_DOLLAR => self.state = VState::Var,
                V_EQUAL => {
                    self.state = VState::Value;
                    return VTok::Equal;
                }
                V_COMMA => return VTok::Comma,
                V_OBRACKET => return VTok::OBracket,
                V_CBRACKET => return VTok::CBracket,
                V_VARIABLE => return VTok::Var(lossy(text)),
                V_QUOTED => {
                    self.state = VState::Var;
                    let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or(&[]);
                    return VTok::Str(lossy(inner));
                }
                V_ALNUM => {
                    self.state = VState::Var;
                    return VTok::Str(lossy(text));
                }
                V_EOA_DOLLAR => return VTok::Eoa(None),
                V_EOA_CHAR => {
                    self.state = VState::Initial;
                    return VTok::Eoa(Some(b));
                }
                // echoed: dropped from the output
                _ => {}
            }
        }
    }

    fn error(&self, tok: &VTok, expecting: &str) -> String {
        self.loc.syntax_error(tok.bison_name(), expecting)
    }

    fn expect_var(&mut self) -> Result<String, String> {
        match self.next() {
            VTok::Var(v) => Ok(v.to_ascii_uppercase()),
            t => Err(self.error(&t, "VARIABLE")),
        }
    }

    fn expect_eoa(&mut self) -> Result<Option<u8>, String> {
        match self.next() {
            VTok::Eoa(c) => Ok(c),
            t => Err(self.error(&t, "EOA")),
        }
    }
}

/// Runs oned's `$` grammar over `input`; errors are bison's message.
fn expand_bytes(
    input: &[u8],
    keep_final_backslash: bool,
    resolve: &dyn Fn(&VarRef) -> Option<String>,
) -> Result<String, String> {
    let mut lx = VarLexer {
        s: input,
        pos: 0,
        state: VState::Initial,
        loc: Loc::new(),
        keep_final_backslash,
    };
    let mut out: Vec<u8> = Vec::with_capacity(input.len());
    let mut first = true;
    loop {
        match lx.next() {
            VTok::End if !first => return Ok(lossy(&out)),
            VTok::RStr(text) => out.extend_from_slice(&text),
            VTok::Var(name) => {
                let name = name.to_ascii_uppercase();
                let (var, end) = match lx.next() {
                    VTok::Eoa(c) => (VarRef::Simple(name), c),
                    VTok::OBracket => {
                        let attr = lx.expect_var()?;
                        let filter = match lx.next() {
                            VTok::CBracket => None,
                            VTok::Comma => {
                                let key = lx.expect_var()?;
                                match lx.next() {
                                    VTok::Equal => {}
                                    t => return Err(lx.error(&t, "EQUAL")),
                                }
                                let value = match lx.next() {
                                    VTok::Str(v) => v,
                                    t => return Err(lx.error(&t, "STRING")),
                                };
                                match lx.next() {
                                    VTok::CBracket => {}
                                    t => return Err(lx.error(&t, "CBRACKET")),
                                }
                                Some((key, value))
                            }
                            t => return Err(lx.error(&t, "COMMA or CBRACKET")),
                        };
                        let end = lx.expect_eoa()?;
                        (
                            VarRef::Attr {
                                var: name,
                                attr,
                                filter,
                            },
                            end,
                        )
                    }
                    t => return Err(lx.error(&t, "OBRACKET or EOA")),
                };
                if let Some(v) = resolve(&var) {
                    out.extend_from_slice(v.as_bytes());
                }
                out.extend(end);
            }
            t => {
                let expecting = if first {
                    "VARIABLE or RSTRING"
                } else {
                    "$end or VARIABLE or RSTRING"
                };
                return Err(lx.error(&t, expecting));
            }
        }
        first = false;
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn single(name: &str, value: &str) -> Attribute {
        Attribute::Single {
            name: name.into(),
            value: value.into(),
        }
    }

    fn vector(name: &str, pairs: &[(&str, &str)]) -> Attribute {
        Attribute::Vector {
            name: name.into(),
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn parsed(text: &str) -> Vec<Attribute> {
        match Template::parse(text) {
            Ok(t) => t.attrs,
            Err(e) => panic!("{text:?} should parse, got {e}"),
        }
    }

    fn error_text(text: &str) -> String {
        match Template::parse(text) {
            Ok(t) => panic!("{text:?} should fail, got {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn check_parses(cases: &[(&str, Vec<Attribute>)]) {
        for (text, want) in cases {
            assert_eq!(&parsed(text), want, "input {text:?}");
        }
    }

    fn check_errors(cases: &[(&str, &str)]) {
        for (text, want) in cases {
            assert_eq!(error_text(text), *want, "input {text:?}");
        }
    }

    #[test]
    fn reports_unclosed_quote_in_vector_exactly_like_oned() {
        check_errors(&[(
            "MEMORY=\"512\"\nCPU = [ \"unclosed",
            "Parse error: syntax error, unexpected $end, expecting EQUAL at line 1, columns 23:31",
        )]);
    }

    #[test]
    fn reports_stray_comma_between_attributes() {
        check_errors(&[
            (
                "CPU=1.5,",
                "Parse error: syntax error, unexpected COMMA, expecting $end at line 0, columns 8:9",
            ),
            (
                "X = 1, Y = 2",
                "Parse error: syntax error, unexpected COMMA, expecting $end at line 0, columns 6:8",
            ),
            (
                "X = [ A = 1,, B = 2 ]",
                "Parse error: syntax error, unexpected COMMA, expecting VARIABLE at line 0, columns 13:15",
            ),
            (
                "X = [ A = 1, ]",
                "Parse error: syntax error, unexpected CBRACKET, expecting VARIABLE at line 0, columns 14:15",
            ),
        ]);
    }

    #[test]
    fn refuses_comment_after_value() {
        check_errors(&[
            (
                "X = 1 # c",
                "Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at line 0, columns 9:10",
            ),
            (
                "# final comment without newline",
                "Parse error: syntax error, unexpected VARIABLE, expecting EQUAL or EQUAL_EMPTY at line 0, columns 9:16",
            ),
        ]);
    }

    #[test]
    fn accepts_comment_after_value_when_a_newline_follows_as_oned_does() {
        check_parses(&[
            ("X = 1 # c\n", vec![single("X", "1")]),
            (
                "# c\nX = \"a\" # c\nY = 2",
                vec![single("X", "a"), single("Y", "2")],
            ),
        ]);
    }

    #[test]
    fn reports_missing_equal_and_bracket() {
        check_errors(&[
            (
                "X",
                "Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at line 0, columns 1:2",
            ),
            (
                "X =",
                "Parse error: syntax error, unexpected $end, expecting OBRACKET or CCDATA or STRING at line 0, columns 2:4",
            ),
            (
                "X = [",
                "Parse error: syntax error, unexpected $end, expecting CBRACKET or VARIABLE at line 0, columns 5:6",
            ),
            (
                "X = [ A = 1 B = 2 ]",
                "Parse error: syntax error, unexpected VARIABLE, expecting COMMA or CBRACKET at line 0, columns 13:14",
            ),
            (
                "X = [ A = 1",
                "Parse error: syntax error, unexpected $end, expecting COMMA or CBRACKET at line 0, columns 11:12",
            ),
            (
                "= 1",
                "Parse error: syntax error, unexpected EQUAL, expecting $end at line 0, columns 1:3",
            ),
            (
                "X = [ A = ]",
                "Parse error: syntax error, unexpected $end, expecting STRING at line 0, columns 11:12",
            ),
        ]);
    }

    #[test]
    fn refuses_cdata_end_on_a_values_line() {
        check_errors(&[
            ("X = \"a]]>\"", "Parse error."),
            ("X = a ]]>", "Parse error."),
            ("X = [ A = \"]]>\" ]", "Parse error."),
            (
                "X = [\n A = \"]]>\" ]",
                "Parse error: syntax error, unexpected CCDATA, expecting STRING at line 1, columns 12:19",
            ),
        ]);
    }

    #[test]
    fn parses_single_and_vector_attributes() {
        check_parses(&[
            ("", vec![]),
            ("# only a comment\n", vec![]),
            ("memory = 512", vec![single("MEMORY", "512")]),
            ("X = 1 Y = 2", vec![single("X", "1"), single("Y", "2")]),
            ("X =\nY = 2", vec![single("X", ""), single("Y", "2")]),
            ("X = \"\"", vec![single("X", "")]),
            ("X = \"  padded  \"", vec![single("X", "padded")]),
            (
                "X = \"a, b = [c] # d\"",
                vec![single("X", "a, b = [c] # d")],
            ),
            ("X = \"two\nlines\"", vec![single("X", "two\nlines")]),
            ("X = [ ]", vec![vector("X", &[])]),
            (
                "nic = [ network = \"a b\", ip = 10.0.0.1 ]",
                vec![vector("NIC", &[("NETWORK", "a b"), ("IP", "10.0.0.1")])],
            ),
            (
                "D = [\n  A = 1\n  ,\n  B = 2\n]\nE = 3",
                vec![vector("D", &[("A", "1"), ("B", "2")]), single("E", "3")],
            ),
            (
                "D = [ A = 1 ]\nD = [ A = 2 ]",
                vec![vector("D", &[("A", "1")]), vector("D", &[("A", "2")])],
            ),
            ("X = 1\nX = 2", vec![single("X", "1"), single("X", "2")]),
        ]);
    }

    #[test]
    fn keeps_first_value_of_repeated_vector_key() {
        check_parses(&[(
            "X = [ A = 1, a = 2, B = 3 ]",
            vec![vector("X", &[("A", "1"), ("B", "3")])],
        )]);
    }

    #[test]
    fn unescapes_only_backslash_quote() {
        check_parses(&[
            (r#"X = "say \"hi\"""#, vec![single("X", r#"say "hi""#)]),
            (r#"X = "a\\"b""#, vec![single("X", r#"a\"b"#)]),
            (r#"X = "c:\dir\n""#, vec![single("X", r"c:\dir\n")]),
            (r#"X = a\"b"#, vec![single("X", r#"a"b"#)]),
            // a final backslash escapes the closing quote when a later `"` exists
            (r#"X = "a\""#, vec![single("X", r"a\")]),
        ]);
        check_errors(&[(
            "X = \"a\\\"\nY=\"b\"",
            "Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at line 1, columns 14:15",
        )]);
    }

    #[test]
    fn takes_unbalanced_quotes_literally_like_oneds_lexer() {
        check_parses(&[
            ("X = \"abc", vec![single("X", "\"abc")]),
            ("X = \"a\"b\"", vec![single("X", "\"a\"b\"")]),
            ("X = \"x\"\r\n", vec![single("X", "\"x\"")]),
        ]);
    }

    #[test]
    fn fixes_names_like_oneds_attribute_constructor() {
        check_parses(&[
            ("1x = 2", vec![single("ONE_1X", "2")]),
            ("XMLa = 1", vec![single("ONE_XMLA", "1")]),
            ("xml = 1", vec![single("XML", "1")]),
            ("_a = 1", vec![single("_A", "1")]),
        ]);
    }

    #[test]
    fn stops_at_nul_like_a_c_string() {
        check_parses(&[("A = 1\0B = 2", vec![single("A", "1")])]);
    }

    #[test]
    fn counts_lines_and_columns_across_the_whole_input() {
        check_errors(&[
            (
                "A = 1\n\nB = 2\nC",
                "Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at line 3, columns 14:15",
            ),
            (
                "A = \"x\ny\"\nB",
                "Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at line 2, columns 11:12",
            ),
            // a newline echoed in VALUE state is not counted by flex
            (
                "A = =\nB C",
                "Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at line 0, columns 9:10",
            ),
        ]);
    }

    #[test]
    fn parses_the_xml_form() {
        check_parses(&[
            (
                "<TEMPLATE><MEMORY><![CDATA[512]]></MEMORY><cpu> 0.5 </cpu></TEMPLATE>",
                vec![single("MEMORY", "512"), single("CPU", "0.5")],
            ),
            (
                "<?xml version=\"1.0\"?>\n<TEMPLATE>\n <NIC>\n  <IP>10.0.0.1</IP>\n  <ip>x</ip>\n  <IP>&lt;2&gt;</IP>\n  <EMPTY/>\n </NIC>\n <E></E>\n <V><A/></V>\n</TEMPLATE>\n",
                vec![
                    vector("NIC", &[("IP", "<2>"), ("ip", "x")]),
                    vector("V", &[]),
                ],
            ),
            (
                "<T><A>a&amp;b&#x41;</A><B><![CDATA[x]]><![CDATA[y]]></B><C>x<!--c-->y</C></T>",
                vec![single("A", "a&bA"), single("B", "xy")],
            ),
            ("<T/>", vec![]),
        ]);
    }

    #[test]
    fn refuses_malformed_xml() {
        let deep = format!("<T>{}{}</T>", "<a>".repeat(300), "</a>".repeat(300));
        for text in [
            "<TEMPLATE><A>1</A>",
            "<TEMPLATE><A>1</B></TEMPLATE>",
            "<T><A>a & b</A></T>",
            "<T><A>&nbsp;</A></T>",
            "<T></T>trailing",
            "<T><A>]]></A></T>",
            "<T><A>&#0;</A></T>",
            "<T><A>\u{1}</A></T>",
            "<!DOCTYPE T><T/>",
            "<",
            "<T a=\"1\" a=\"2\"/>",
            deep.as_str(),
        ] {
            assert_eq!(
                error_text(text),
                "Parse error: XML Template malformed.",
                "input {text:?}"
            );
        }
    }

    #[test]
    fn looks_up_attributes_case_insensitively() {
        let t = Template {
            attrs: parsed("A = [ K = 1 ]\nMEMORY = 512\nMEMORY = 1024\nA = 2"),
        };
        assert_eq!(t.get("memory"), Some("512"));
        assert_eq!(t.get("A"), Some("2"));
        assert_eq!(t.vector_get("a", "k"), Some("1"));
        assert_eq!(t.vector("MEMORY"), None);
        assert_eq!(t.get("NONE"), None);
    }

    #[test]
    fn sets_and_removes_attributes_by_name() {
        let mut t = Template {
            attrs: parsed("A = 1\nB = 2\nA = 3"),
        };
        t.set("a", "9");
        assert_eq!(t.attrs, vec![single("A", "9"), single("B", "2")]);
        t.set_vector(
            "b",
            vec![("k".into(), "1".into()), ("K".into(), "2".into())],
        );
        assert_eq!(t.attrs, vec![single("A", "9"), vector("B", &[("K", "1")])]);
        assert!(t.remove("A"));
        assert!(!t.remove("A"));
        assert_eq!(t.attrs, vec![vector("B", &[("K", "1")])]);
    }

    #[test]
    fn merges_whole_attributes_like_oned() {
        let cases: &[(&str, &str, &str)] = &[
            ("A = 1\nB = 2", "A = 3", "B = 2\nA = 3"),
            ("D = [ X = 1, Y = 2 ]", "D = [ X = 9 ]", "D = [ X = 9 ]"),
            (
                "D = [ X = 1 ]\nD = [ X = 2 ]\nE = 1",
                "D = [ X = 3 ]",
                "E = 1\nD = [ X = 3 ]",
            ),
            ("D = [ X = 1 ]\nE = 1", "D = [ ]", "E = 1"),
            ("E = 1", "D = [ ]", "E = 1"),
            ("A = 1", "A = \"\"", "A = \"\""),
            (
                "A = 1",
                "B = [ K = v ]\nB = [ K = w ]",
                "A = 1\nB = [ K = v ]\nB = [ K = w ]",
            ),
        ];
        for (base, update, want) in cases {
            let mut t = Template::parse(base).unwrap();
            t.merge(&Template::parse(update).unwrap());
            assert_eq!(t, Template::parse(want).unwrap(), "{base:?} + {update:?}");
        }
    }

    #[test]
    fn renders_templates_that_parse_back_unchanged() {
        let t = Template {
            attrs: vec![
                single("NAME", "job \"x\", [1] = #2 $HOME \\ é"),
                single("EMPTY", ""),
                single("XMLRPC", "1"),
                vector("NIC", &[("IP", "10.0.0.1"), ("NETWORK", "a,b]c")]),
                vector("E", &[]),
                single("PATH", "C:\\dir\\"),
            ],
        };
        let text = t.to_text().unwrap();
        assert_eq!(Template::parse(&text).unwrap(), t, "{text}");
    }

    #[test]
    fn quotes_values_with_the_only_escape_the_grammar_has() {
        let cases: &[(&str, &str)] = &[
            ("", "\"\""),
            ("512", "\"512\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("a\\\"b", "\"a\\\\\"b\""),
            ("x]\n=y", "\"x]\n=y\""),
            ("C:\\dir\\", "C:\\dir\\"),
        ];
        for (value, want) in cases {
            assert_eq!(quote_value(value).as_deref(), Ok(*want), "{value:?}");
        }
    }

    #[test]
    fn accepts_only_utf8_xml_declarations() {
        check_parses(&[
            (
                "<?xml version=\"1.0\" encoding=\"utf-8\" standalone='yes' ?><T><A>1</A></T>",
                vec![single("A", "1")],
            ),
            (
                "<?xml version='1.1'?>\n<!-- c --><T><A>1</A></T>\n<?pi x?>",
                vec![single("A", "1")],
            ),
        ]);
        for text in [
            "<?xml version=\"2.0\"?><T/>",
            "<?xml encoding=\"UTF-8\"?><T/>",
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><T/>",
            "<T/><?xml version=\"1.0\"?>",
        ] {
            assert_eq!(
                error_text(text),
                "Parse error: XML Template malformed.",
                "{text:?}"
            );
        }
    }

    #[test]
    fn refuses_what_the_grammar_cannot_carry() {
        let cases: &[(&str, Unrepresentable)] = &[
            ("a\0b", Unrepresentable::ContainsNul),
            ("x]]>y", Unrepresentable::ContainsCdataEnd),
            ("bell\u{7}", Unrepresentable::InvalidXmlChar),
            (" lead", Unrepresentable::SurroundingWhitespace),
            ("trail\n", Unrepresentable::SurroundingWhitespace),
            ("a b\\", Unrepresentable::TrailingBackslash),
            ("\"a\\", Unrepresentable::TrailingBackslash),
            ("a\\\"b\\", Unrepresentable::TrailingBackslash),
        ];
        for (value, reason) in cases {
            assert_eq!(
                quote_value(value),
                Err(UnrepresentableValue {
                    value: value.to_string(),
                    reason: *reason
                }),
                "{value:?}"
            );
        }
        let names: &[(&str, Unrepresentable)] = &[
            ("", Unrepresentable::InvalidName),
            ("A-B", Unrepresentable::InvalidName),
            ("lower", Unrepresentable::NotUpperCase),
            ("1X", Unrepresentable::LeadingDigit),
        ];
        for (name, reason) in names {
            let t = Template {
                attrs: vec![single(name, "v")],
            };
            assert_eq!(t.to_text().map_err(|e| e.reason), Err(*reason), "{name:?}");
        }
        let dup = Template {
            attrs: vec![vector("V", &[("K", "1"), ("K", "2")])],
        };
        assert_eq!(
            dup.to_text().map_err(|e| e.reason),
            Err(Unrepresentable::DuplicateKey)
        );
        let err = quote_value(&format!("{}]]>", "y".repeat(500))).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn validates_attribute_names() {
        for (name, ok) in [
            ("A_1", true),
            ("a", true),
            ("", false),
            ("A B", false),
            ("É", false),
        ] {
            assert_eq!(is_valid_attribute_name(name), ok, "{name:?}");
        }
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const NASTY: &[&str] = &[
        "\"",
        "\\",
        "\\\"",
        "\\\\\"",
        "]",
        "[",
        ",",
        "=",
        "#",
        "\n",
        " ",
        "\t",
        "\r",
        "$",
        "$$",
        "${",
        "]]",
        ">",
        "]]>",
        "é",
        "日本",
        "'",
        "<",
        "&",
        "&amp;",
        "\0",
        "\u{1}",
        "@^_^@",
        "X = 1",
        "A = [ B = 2 ]",
        "\" ]\nEVIL = 1 #",
        "a",
        "Z",
        "0",
        "_",
        "\u{FFFF}",
        "\x0b",
    ];

    fn nasty_string(rng: &mut Rng) -> String {
        let mut s = String::new();
        for _ in 0..rng.below(8) {
            s.push_str(NASTY[rng.below(NASTY.len())]);
        }
        if rng.below(50) == 0 {
            s.push_str(&"\\\"]".repeat(2000));
        }
        s
    }

    #[test]
    fn round_trips_thousands_of_hostile_values_or_refuses_them_for_a_reason() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for _ in 0..6000 {
            let value = nasty_string(&mut rng);
            match quote_value(&value) {
                Ok(_) => {
                    accepted += 1;
                    let t = Template {
                        attrs: vec![
                            single("JOB", &value),
                            vector("V", &[("A", &value), ("B", &value)]),
                            single("AFTER", &value),
                        ],
                    };
                    let text = t.to_text().unwrap();
                    assert_eq!(Template::parse(&text), Ok(t), "value {value:?} as {text:?}");
                }
                Err(e) => {
                    let v = &value;
                    let justified = match e.reason {
                        Unrepresentable::ContainsNul => v.contains('\0'),
                        Unrepresentable::ContainsCdataEnd => v.contains("]]>"),
                        Unrepresentable::InvalidXmlChar => v.chars().any(|c| !is_xml_char(c)),
                        Unrepresentable::SurroundingWhitespace => trim_c(v) != v,
                        Unrepresentable::TrailingBackslash => v.ends_with('\\'),
                        _ => false,
                    };
                    assert!(justified, "{value:?} refused: {e}");
                }
            }
        }
        assert!(accepted > 1000, "only {accepted} accepted");
    }

    #[test]
    fn never_panics_on_garbage_input() {
        let mut rng = Rng(42);
        let pieces: &[&str] = &[
            "A",
            "=",
            " = ",
            "[",
            "]",
            ",",
            "\"",
            "\\",
            "\n",
            "#",
            "]]>",
            "<",
            "<T>",
            "</T>",
            "<A>",
            "</A>",
            "&",
            "&lt;",
            "<![CDATA[",
            "<!--",
            "-->",
            "é",
            "\r",
            "$",
            "{",
            "\0",
        ];
        for _ in 0..4000 {
            let mut s = String::new();
            for _ in 0..rng.below(24) {
                s.push_str(pieces[rng.below(pieces.len())]);
            }
            let _ = Template::parse(&s);
            let _ = expand_context_value(&s, &|_| Some("v".into()));
        }
    }

    #[test]
    fn parses_pathological_inputs_in_linear_time() {
        let big = 2_000_000;
        let cases = [
            format!("X = ={}", " ".repeat(big)),
            "#".repeat(big),
            format!("X = \"{}", "\\\"".repeat(big / 2)),
            format!(
                "X = [ {} ]",
                (0..big / 20)
                    .map(|i| format!("K{i} = v"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ];
        let start = std::time::Instant::now();
        for text in &cases {
            let _ = Template::parse(text);
        }
        assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    }

    fn resolver(var: &VarRef) -> Option<String> {
        match var {
            VarRef::Simple(n) if n == "NAME" => Some("vm-7".into()),
            VarRef::Simple(n) if n == "VMID" => Some("7".into()),
            VarRef::Attr { var, attr, filter } if var == "NIC" && attr == "IP" => match filter {
                Some((k, v)) if k == "NIC_ID" && v == "0" => Some("10.0.0.1".into()),
                Some(_) => None,
                None => Some("10.0.0.9".into()),
            },
            VarRef::Attr {
                var,
                attr,
                filter: None,
            } if var == "USER" && attr == "SSH_PUBLIC_KEY" => Some("ssh-ed25519 AAAA".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_context_variables() {
        let cases: &[(&str, &str)] = &[
            ("$NAME", "vm-7"),
            ("host-$VMID.local", "host-7.local"),
            ("$name$vmid", "vm-77"),
            ("$NIC[IP, NIC_ID=\"0\"]", "10.0.0.1"),
            ("$NIC[ip,nic_id=0]/24", "10.0.0.1/24"),
            ("$NIC[IP, NIC_ID=\"1\"]", ""),
            ("$NIC[IP]", "10.0.0.9"),
            ("$USER[SSH_PUBLIC_KEY]", "ssh-ed25519 AAAA"),
            ("$HOME/x", "/x"),
            ("\\$HOME", "\\$HOME"),
            ("\\\\$VMID", "\\\\7"),
            ("a\\b", "a\\b"),
            ("ends\\", "ends\\"),
            ("$VMID\n", "7"),
            ("$VMID\n x", "7 x"),
            ("plain text, no vars", "plain text, no vars"),
            ("", ""),
        ];
        for (value, want) in cases {
            assert_eq!(
                expand_context_value(value, &resolver).as_deref(),
                Ok(*want),
                "{value:?}"
            );
        }
    }

    #[test]
    fn refuses_dollar_without_a_name() {
        let cases: &[(&str, &str)] = &[
            ("$$", "syntax error, unexpected EOA, expecting VARIABLE or RSTRING at line 0, columns 2:3"),
            ("a$(b)", "syntax error, unexpected EOA, expecting $end or VARIABLE or RSTRING at line 0, columns 3:4"),
            ("${HOME}", "syntax error, unexpected EOA, expecting VARIABLE or RSTRING at line 0, columns 2:3"),
            ("cost 5$", "syntax error, unexpected EOA, expecting $end or VARIABLE or RSTRING at line 0, columns 7:8"),
            ("$X=1", "syntax error, unexpected EQUAL, expecting OBRACKET or EOA at line 0, columns 3:4"),
            ("$NIC[IP", "syntax error, unexpected EOA, expecting COMMA or CBRACKET at line 0, columns 6:8"),
            ("$VMID\necho", "syntax error, unexpected VARIABLE, expecting OBRACKET or EOA at line 0, columns 7:11"),
        ];
        for (value, message) in cases {
            assert_eq!(
                expand_context_value(value, &resolver),
                Err(TemplateError::Context {
                    attribute: value.to_string(),
                    message: message.to_string()
                }),
                "{value:?}"
            );
        }
        let e = expand_context_value("$$", &resolver).unwrap_err();
        assert!(
            e.to_string().starts_with("Error parsing: $$. syntax error"),
            "{e}"
        );
    }

    #[test]
    fn expands_a_whole_context_vector_like_oned() {
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let got = expand_context_vector(
            &pairs(&[
                ("SET_HOSTNAME", "$NAME"),
                ("ETH0_IP", "$NIC[IP, NIC_ID=\"0\"]"),
                ("X", "a@^_^@Y=b"),
            ]),
            &resolver,
        );
        assert_eq!(
            got,
            Ok(pairs(&[
                ("ETH0_IP", "10.0.0.1"),
                ("SET_HOSTNAME", "vm-7"),
                ("X", "a"),
                ("Y", "b")
            ]))
        );
        assert_eq!(
            expand_context_vector(&pairs(&[("A", "1"), ("B", "x$")]), &resolver),
            Err(TemplateError::Context {
                attribute: "A=1@^_^@B=x$".into(),
                message: "syntax error, unexpected EOA, expecting $end or VARIABLE or RSTRING at line 0, columns 12:13".into()
            })
        );
        // the last item's final lone backslash is dropped by oned's lexer
        assert_eq!(
            expand_context_vector(&pairs(&[("A", "x\\"), ("B", "y\\")]), &resolver),
            Ok(pairs(&[("A", "x\\"), ("B", "y")]))
        );
        assert_eq!(
            expand_context_vector(&[], &resolver),
            Err(TemplateError::EmptyContext)
        );
    }
}
