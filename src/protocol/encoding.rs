//! Client encodings: the names Postgres accepts for `client_encoding`, the
//! canonical name it reports, and a UTF-8 view of text a client sent in its
//! encoding (query text, names, startup values) for the proxy to reason
//! about. The bytes themselves are always forwarded unchanged: the server
//! converts them and judges their validity.

use std::borrow::Cow;

/// An encoding Postgres supports as `client_encoding` (`pg_enc` order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ClientEncoding {
    SqlAscii,
    EucJp,
    EucCn,
    EucKr,
    EucTw,
    EucJis2004,
    #[default]
    Utf8,
    MuleInternal,
    Latin1,
    Latin2,
    Latin3,
    Latin4,
    Latin5,
    Latin6,
    Latin7,
    Latin8,
    Latin9,
    Latin10,
    Win1256,
    Win1258,
    Win866,
    Win874,
    Koi8r,
    Win1251,
    Win1252,
    Iso8859_5,
    Iso8859_6,
    Iso8859_7,
    Iso8859_8,
    Win1250,
    Win1253,
    Win1254,
    Win1255,
    Win1257,
    Koi8u,
    Sjis,
    Big5,
    Gbk,
    Uhc,
    Gb18030,
    Johab,
    ShiftJis2004,
}

use ClientEncoding as E;

/// Every spelling Postgres accepts, cleaned as it cleans them (ASCII
/// letters and digits only, lower case): `pg_encname_tbl`.
const ALIASES: &[(&str, ClientEncoding)] = &[
    ("abc", E::Win1258),
    ("alt", E::Win866),
    ("big5", E::Big5),
    ("euccn", E::EucCn),
    ("eucjis2004", E::EucJis2004),
    ("eucjp", E::EucJp),
    ("euckr", E::EucKr),
    ("euctw", E::EucTw),
    ("gb18030", E::Gb18030),
    ("gbk", E::Gbk),
    ("iso88591", E::Latin1),
    ("iso885910", E::Latin6),
    ("iso885913", E::Latin7),
    ("iso885914", E::Latin8),
    ("iso885915", E::Latin9),
    ("iso885916", E::Latin10),
    ("iso88592", E::Latin2),
    ("iso88593", E::Latin3),
    ("iso88594", E::Latin4),
    ("iso88595", E::Iso8859_5),
    ("iso88596", E::Iso8859_6),
    ("iso88597", E::Iso8859_7),
    ("iso88598", E::Iso8859_8),
    ("iso88599", E::Latin5),
    ("johab", E::Johab),
    ("koi8", E::Koi8r),
    ("koi8r", E::Koi8r),
    ("koi8u", E::Koi8u),
    ("latin1", E::Latin1),
    ("latin10", E::Latin10),
    ("latin2", E::Latin2),
    ("latin3", E::Latin3),
    ("latin4", E::Latin4),
    ("latin5", E::Latin5),
    ("latin6", E::Latin6),
    ("latin7", E::Latin7),
    ("latin8", E::Latin8),
    ("latin9", E::Latin9),
    ("mskanji", E::Sjis),
    ("muleinternal", E::MuleInternal),
    ("shiftjis", E::Sjis),
    ("shiftjis2004", E::ShiftJis2004),
    ("sjis", E::Sjis),
    ("sqlascii", E::SqlAscii),
    ("tcvn", E::Win1258),
    ("tcvn5712", E::Win1258),
    ("uhc", E::Uhc),
    ("unicode", E::Utf8),
    ("utf8", E::Utf8),
    ("vscii", E::Win1258),
    ("win", E::Win1251),
    ("win1250", E::Win1250),
    ("win1251", E::Win1251),
    ("win1252", E::Win1252),
    ("win1253", E::Win1253),
    ("win1254", E::Win1254),
    ("win1255", E::Win1255),
    ("win1256", E::Win1256),
    ("win1257", E::Win1257),
    ("win1258", E::Win1258),
    ("win866", E::Win866),
    ("win874", E::Win874),
    ("win932", E::Sjis),
    ("win936", E::Gbk),
    ("win949", E::Uhc),
    ("win950", E::Big5),
    ("windows1250", E::Win1250),
    ("windows1251", E::Win1251),
    ("windows1252", E::Win1252),
    ("windows1253", E::Win1253),
    ("windows1254", E::Win1254),
    ("windows1255", E::Win1255),
    ("windows1256", E::Win1256),
    ("windows1257", E::Win1257),
    ("windows1258", E::Win1258),
    ("windows866", E::Win866),
    ("windows874", E::Win874),
    ("windows932", E::Sjis),
    ("windows936", E::Gbk),
    ("windows949", E::Uhc),
    ("windows950", E::Big5),
];

impl ClientEncoding {
    /// The encoding a name denotes, as Postgres reads it: case and
    /// anything but ASCII letters and digits ignored (`ISO-8859-1`,
    /// `iso_8859_1` and `Latin1` are one encoding).
    pub fn from_name(name: &str) -> Option<Self> {
        // Postgres refuses names of NAMEDATALEN (64) bytes or more.
        if name.is_empty() || name.len() >= 64 {
            return None;
        }
        let mut key = [0u8; 64];
        let mut n = 0;
        for b in name.bytes().filter(u8::is_ascii_alphanumeric) {
            key[n] = b.to_ascii_lowercase();
            n += 1;
        }
        let key = &key[..n];
        ALIASES
            .binary_search_by(|(alias, _)| alias.as_bytes().cmp(key))
            .ok()
            .map(|i| ALIASES[i].1)
    }

    /// The name Postgres reports for it (`SHOW client_encoding`,
    /// ParameterStatus): `pg_enc2name_tbl`.
    pub fn canonical(self) -> &'static str {
        match self {
            E::SqlAscii => "SQL_ASCII",
            E::EucJp => "EUC_JP",
            E::EucCn => "EUC_CN",
            E::EucKr => "EUC_KR",
            E::EucTw => "EUC_TW",
            E::EucJis2004 => "EUC_JIS_2004",
            E::Utf8 => "UTF8",
            E::MuleInternal => "MULE_INTERNAL",
            E::Latin1 => "LATIN1",
            E::Latin2 => "LATIN2",
            E::Latin3 => "LATIN3",
            E::Latin4 => "LATIN4",
            E::Latin5 => "LATIN5",
            E::Latin6 => "LATIN6",
            E::Latin7 => "LATIN7",
            E::Latin8 => "LATIN8",
            E::Latin9 => "LATIN9",
            E::Latin10 => "LATIN10",
            E::Win1256 => "WIN1256",
            E::Win1258 => "WIN1258",
            E::Win866 => "WIN866",
            E::Win874 => "WIN874",
            E::Koi8r => "KOI8R",
            E::Win1251 => "WIN1251",
            E::Win1252 => "WIN1252",
            E::Iso8859_5 => "ISO_8859_5",
            E::Iso8859_6 => "ISO_8859_6",
            E::Iso8859_7 => "ISO_8859_7",
            E::Iso8859_8 => "ISO_8859_8",
            E::Win1250 => "WIN1250",
            E::Win1253 => "WIN1253",
            E::Win1254 => "WIN1254",
            E::Win1255 => "WIN1255",
            E::Win1257 => "WIN1257",
            E::Koi8u => "KOI8U",
            E::Sjis => "SJIS",
            E::Big5 => "BIG5",
            E::Gbk => "GBK",
            E::Uhc => "UHC",
            E::Gb18030 => "GB18030",
            E::Johab => "JOHAB",
            E::ShiftJis2004 => "SHIFT_JIS_2004",
        }
    }

    /// The value a server reports after `client_encoding` is set to
    /// `name`: the canonical name, except that `UNICODE` is left as given
    /// (Postgres keeps it for old JDBC drivers, which look for it).
    pub fn reported(name: &str) -> Option<&'static str> {
        if name == "UNICODE" {
            return Some("UNICODE");
        }
        Self::from_name(name).map(Self::canonical)
    }

    /// Whether every byte below 0x80 is the ASCII character it looks like.
    /// True of every encoding a server can use; the client-only ones
    /// (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, SHIFT_JIS_2004) have ASCII
    /// bytes inside multibyte characters (`ソ` is `0x83 0x5C` in SJIS:
    /// a backslash to a naive reader).
    pub fn ascii_safe(self) -> bool {
        !matches!(
            self,
            E::Sjis | E::Big5 | E::Gbk | E::Uhc | E::Gb18030 | E::Johab | E::ShiftJis2004
        )
    }

    /// Bytes in this encoding mean what the same bytes mean in UTF-8
    /// (for the server: SQL_ASCII bytes are checked against a UTF8
    /// database's encoding as they are).
    pub fn is_utf8(self) -> bool {
        matches!(self, E::Utf8 | E::SqlAscii)
    }

    /// A decoder that reads this encoding exactly where its text is valid
    /// (the WHATWG tables, which agree with Postgres's conversions on
    /// every byte structure and all but a few vendor characters).
    fn decoder(self) -> Option<&'static encoding_rs::Encoding> {
        use encoding_rs as rs;
        Some(match self {
            E::EucJp | E::EucJis2004 => rs::EUC_JP,
            // GB2312 (EUC-CN) is a subset of GBK.
            E::EucCn | E::Gbk => rs::GBK,
            // encoding_rs's EUC-KR is windows-949, UHC, a superset.
            E::EucKr | E::Uhc => rs::EUC_KR,
            E::Latin2 => rs::ISO_8859_2,
            E::Latin3 => rs::ISO_8859_3,
            E::Latin4 => rs::ISO_8859_4,
            // ISO-8859-9 is windows-1254 but for 0x80..0xA0 (see `decode`).
            E::Latin5 => rs::WINDOWS_1254,
            E::Latin6 => rs::ISO_8859_10,
            E::Latin7 => rs::ISO_8859_13,
            E::Latin8 => rs::ISO_8859_14,
            E::Latin9 => rs::ISO_8859_15,
            E::Latin10 => rs::ISO_8859_16,
            E::Win1256 => rs::WINDOWS_1256,
            E::Win1258 => rs::WINDOWS_1258,
            E::Win866 => rs::IBM866,
            E::Win874 => rs::WINDOWS_874,
            E::Koi8r => rs::KOI8_R,
            E::Win1251 => rs::WINDOWS_1251,
            E::Win1252 => rs::WINDOWS_1252,
            E::Iso8859_5 => rs::ISO_8859_5,
            E::Iso8859_6 => rs::ISO_8859_6,
            E::Iso8859_7 => rs::ISO_8859_7,
            E::Iso8859_8 => rs::ISO_8859_8,
            E::Win1250 => rs::WINDOWS_1250,
            E::Win1253 => rs::WINDOWS_1253,
            E::Win1254 => rs::WINDOWS_1254,
            E::Win1255 => rs::WINDOWS_1255,
            E::Win1257 => rs::WINDOWS_1257,
            E::Koi8u => rs::KOI8_U,
            E::Sjis | E::ShiftJis2004 => rs::SHIFT_JIS,
            E::Big5 => rs::BIG5,
            E::Gb18030 => rs::GB18030,
            // No decoder: EUC_TW, MULE_INTERNAL, JOHAB. UTF8, SQL_ASCII
            // and LATIN1 are read in `decode`.
            E::EucTw | E::MuleInternal | E::Johab | E::Utf8 | E::SqlAscii | E::Latin1 => {
                return None;
            }
        })
    }

    /// A UTF-8 view of `bytes`, text the client sent in this encoding.
    /// Borrowed (no copy, one validation pass) for UTF-8 clients and for
    /// ASCII text in any encoding.
    pub fn decode(self, bytes: &[u8]) -> SqlText<'_> {
        // Every client encoding reads ASCII-only bytes as ASCII.
        if self.is_utf8() || bytes.is_ascii() {
            return match std::str::from_utf8(bytes) {
                Ok(text) => SqlText::exact(Cow::Borrowed(text)),
                Err(_) => SqlText::lossy(String::from_utf8_lossy(bytes)),
            };
        }
        if self == E::Latin1 {
            return SqlText::exact(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()));
        }
        let c1 = self == E::Latin5 && bytes.iter().any(|b| (0x80..0xA0).contains(b));
        match self.decoder() {
            Some(d) if !c1 => match d.decode_without_bom_handling_and_without_replacement(bytes) {
                Some(text) => SqlText::exact(text),
                None => SqlText::lossy(d.decode_without_bom_handling(bytes).0),
            },
            // Only ASCII-safe encodings lack a decoder (JOHAB aside, which
            // is never read exactly): a lossy view keeps their token
            // structure.
            _ => SqlText::lossy(String::from_utf8_lossy(bytes)),
        }
    }
}

impl ClientEncoding {
    /// `text` (the proxy's own words, which may quote what the client
    /// sent) in this encoding, for a client that reads it: what Postgres
    /// does with its messages. A character the encoding lacks becomes
    /// `?`. Borrowed for UTF-8 clients and ASCII text.
    pub fn encode<'a>(self, text: &'a str) -> Cow<'a, [u8]> {
        if self.is_utf8() || text.is_ascii() {
            return Cow::Borrowed(text.as_bytes());
        }
        let mut out = Vec::with_capacity(text.len());
        let mut one = [0u8; 4];
        for c in text.chars() {
            if c.is_ascii() {
                out.push(c as u8);
                continue;
            }
            match self {
                E::Latin1 => out.push(u8::try_from(u32::from(c)).unwrap_or(b'?')),
                _ => match self.decoder() {
                    Some(encoding) => {
                        let (bytes, _, unmappable) = encoding.encode(c.encode_utf8(&mut one));
                        if unmappable {
                            out.push(b'?');
                        } else {
                            out.extend_from_slice(&bytes);
                        }
                    }
                    // No table (EUC_TW, MULE_INTERNAL, JOHAB): ASCII only.
                    None => out.push(b'?'),
                },
            }
        }
        Cow::Owned(out)
    }
}

/// Text a client sent, as UTF-8 for the proxy to read.
#[derive(Debug)]
pub struct SqlText<'a> {
    pub text: Cow<'a, str>,
    /// The text is exactly what the server will read. When false it is a
    /// lossy rendering (the bytes are invalid in the client's encoding, or
    /// the proxy has no decoder for it): fine for display, not for
    /// decisions that depend on its characters.
    pub exact: bool,
}

impl<'a> SqlText<'a> {
    fn exact(text: Cow<'a, str>) -> Self {
        SqlText { text, exact: true }
    }

    fn lossy(text: Cow<'a, str>) -> Self {
        SqlText {
            text: Cow::Owned(text.into_owned()),
            exact: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_words_reach_a_client_in_its_encoding() {
        let text = "relation «café» ünknown 日本";
        assert_eq!(E::Utf8.encode(text).as_ref(), text.as_bytes());
        assert_eq!(E::Latin1.encode("select 1").as_ref(), b"select 1");
        assert_eq!(
            E::Latin1.encode(text).as_ref(),
            b"relation \xabcaf\xe9\xbb \xfcnknown ??"
        );
        assert_eq!(
            E::Win1251.encode("ошибка é").as_ref(),
            b"\xee\xf8\xe8\xe1\xea\xe0 ?"
        );
        assert_eq!(E::Sjis.encode("日本").as_ref(), b"\x93\xfa\x96\x7b");
        assert_eq!(E::EucTw.encode("a日").as_ref(), b"a?");
        // Read back, it is the text (where the encoding has the characters).
        let latin1 = E::Latin1.encode("café");
        assert_eq!(E::Latin1.decode(&latin1).text, "café");
    }

    #[test]
    fn aliases_are_sorted_for_the_binary_search() {
        assert!(ALIASES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn names_are_read_as_postgres_reads_them() {
        assert_eq!(ClientEncoding::from_name("utf8"), Some(E::Utf8));
        assert_eq!(ClientEncoding::from_name("UTF-8"), Some(E::Utf8));
        assert_eq!(ClientEncoding::from_name("eucjp"), Some(E::EucJp));
        assert_eq!(ClientEncoding::from_name("ISO_8859-15"), Some(E::Latin9));
        assert_eq!(ClientEncoding::from_name("latin9"), Some(E::Latin9));
        assert_eq!(ClientEncoding::from_name("Shift-JIS"), Some(E::Sjis));
        assert_eq!(ClientEncoding::from_name("auto"), None);
        assert_eq!(ClientEncoding::from_name(""), None);
        assert_eq!(ClientEncoding::reported("eucjp"), Some("EUC_JP"));
        assert_eq!(ClientEncoding::reported("latin9"), Some("LATIN9"));
        assert_eq!(ClientEncoding::reported("UNICODE"), Some("UNICODE"));
        assert_eq!(ClientEncoding::reported("unicode"), Some("UTF8"));
        assert_eq!(ClientEncoding::reported("x".repeat(80).as_str()), None);
    }

    #[test]
    fn utf8_text_is_borrowed_and_invalid_bytes_are_lossy() {
        let t = E::Utf8.decode("café".as_bytes());
        assert!(t.exact && matches!(t.text, Cow::Borrowed("café")));
        let t = E::Utf8.decode(b"select 'caf\xe9'");
        assert!(!t.exact);
        assert_eq!(t.text, "select 'caf\u{FFFD}'");
    }

    #[test]
    fn single_byte_encodings_decode_exactly() {
        let t = E::Latin1.decode(b"select 'caf\xe9'");
        assert!(t.exact);
        assert_eq!(t.text, "select 'café'");
        // LATIN1 C1 bytes are characters, not windows-1252's.
        assert_eq!(E::Latin1.decode(b"\x80").text, "\u{80}");
        assert_eq!(E::Latin9.decode(b"\xa4").text, "€");
        assert_eq!(E::Win1251.decode(b"\xe0").text, "а");
        assert_eq!(E::Latin5.decode(b"\xfd").text, "ı");
        assert!(!E::Latin5.decode(b"\x80").exact);
        let t = E::Utf8.decode(b"select 1");
        assert!(matches!(t.text, Cow::Borrowed(_)));
        assert!(matches!(
            E::Latin1.decode(b"select 1").text,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn ascii_bytes_inside_multibyte_characters_stay_inside() {
        // SJIS `ソ` ends in 0x5C, a backslash to a byte-wise reader.
        let t = E::Sjis.decode(b"select E'\x83\x5c', 1");
        assert!(t.exact);
        assert_eq!(t.text, "select E'ソ', 1");
        assert!(!E::Sjis.ascii_safe());
        assert!(E::EucJp.ascii_safe());
        // A lead byte without its trail byte: not exact.
        assert!(!E::Sjis.decode(b"select '\x83'").exact);
        // No decoder: lossy, but ASCII-safe, so its structure holds.
        let t = E::EucTw.decode(b"select '\xa4\xa1'");
        assert!(!t.exact);
        assert!(t.text.starts_with("select '") && t.text.ends_with('\''));
    }
}
