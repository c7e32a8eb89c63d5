//! Validated newtypes: everything that comes from a user is parsed into one of these at the
//! edge, and nothing past the edge checks it again because nothing can be invalid.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{LanguageSettings, LimitSettings};

/// Why a value from a user was refused; the message is safe to show that user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

/// What a user may do: students keep their own tasks, teachers and admins also read everyone's,
/// admins create users.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Role {
    Student,
    Teacher,
    Admin,
}

impl Role {
    /// The name stored in the database and shown in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Teacher => "teacher",
            Role::Admin => "admin",
        }
    }

    /// Teachers and admins may read every user's tasks and runs.
    pub fn reads_everything(self) -> bool {
        matches!(self, Role::Teacher | Role::Admin)
    }
}

/// 3–32 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok_len = (3..=32).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        let ok_start = raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
        if ok_len && ok_chars && ok_start {
            Ok(Self(raw.to_owned()))
        } else {
            invalid(
                "username must be 3 to 32 characters of a-z, 0-9, '.', '_' or '-', starting with \
                 a letter or digit",
            )
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new password: 8 to 256 bytes. Existing passwords are only ever compared, never parsed.
#[derive(Clone)]
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if (8..=256).contains(&raw.len()) {
            Ok(Self(raw.to_owned()))
        } else {
            invalid("password must be 8 to 256 bytes long")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(..)")
    }
}

/// A task's name: 1 to 100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskName(String);

impl TaskName {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let name = raw.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return invalid("name must be 1 to 100 characters long");
        }
        if name.chars().any(char::is_control) {
            return invalid("name must not contain control characters");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A task's description: at most 10,000 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.chars().count() > 10_000 {
            return invalid("description must be at most 10000 characters long");
        }
        if raw.contains('\0') {
            return invalid("description must not contain NUL characters");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A shell command line run by `sh -c`: 1 to 4,096 bytes, no NUL, not only blanks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command(String);

impl Command {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.trim().is_empty() || raw.len() > 4096 {
            return invalid("command must be 1 to 4096 bytes and not blank");
        }
        if raw.contains('\0') {
            return invalid("command must not contain NUL characters");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of a configured language (`python`, `r`, `scala`, `java`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Language(String);

impl Language {
    pub fn parse<'a>(
        raw: &str,
        languages: &'a std::collections::BTreeMap<String, LanguageSettings>,
    ) -> Result<(Self, &'a LanguageSettings), Invalid> {
        match languages.get(raw) {
            Some(settings) => Ok((Self(raw.to_owned()), settings)),
            None => {
                let known: Vec<&str> = languages.keys().map(String::as_str).collect();
                invalid(format!(
                    "unknown language `{raw}`; known languages: {}",
                    known.join(", ")
                ))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Characters that change how text around them is displayed or that display as nothing:
/// bidirectional controls (a name can then read differently from what it is) and zero-width
/// characters (two names that look the same can differ).
fn is_invisible_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                     // soft hyphen
            | '\u{061C}'               // Arabic letter mark
            | '\u{180E}'               // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space, (non-)joiner, LRM, RLM
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{FEFF}' // zero-width no-break space
    )
}

/// Names Windows reserves for devices, with or without an extension, in any case: a file
/// named so cannot be unpacked there.
fn is_windows_reserved(segment: &str) -> bool {
    let stem = segment.split('.').next().unwrap_or(segment);
    let stem = stem.trim_end_matches(' ').to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        _ => {
            let bytes = stem.as_bytes();
            bytes.len() == 4
                && (stem.starts_with("COM") || stem.starts_with("LPT"))
                && (b'1'..=b'9').contains(&bytes[3])
        }
    }
}

/// A file's path inside a task: relative, `/`-separated, no empty, `.` or `..` segment, no
/// backslash, `:`, control, bidirectional or zero-width character, no Windows device name and
/// no `.git` segment (so an archive unpacks the same on every system and no tool mistakes it
/// for a repository), at most `max_path_bytes` bytes and `max_path_depth` levels.
///
/// This is the one rule for every path coderun takes from a program or a user: saved files,
/// moved files (each path a move produces), and the outputs of runs on both executors.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilePath(String);

impl FilePath {
    pub fn parse(raw: &str, limits: &LimitSettings) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return invalid("path must not be empty");
        }
        if raw.len() > limits.max_path_bytes {
            return invalid(format!(
                "path must be at most {} bytes long",
                limits.max_path_bytes
            ));
        }
        if raw.starts_with('/') {
            return invalid("path must be relative (no leading '/')");
        }
        if raw.contains('\\') {
            return invalid("path must use '/' as separator and contain no backslash");
        }
        if raw.contains(':') {
            return invalid("path must not contain ':' (Windows cannot store it)");
        }
        if raw.chars().any(char::is_control) {
            return invalid("path must not contain control characters");
        }
        if raw.chars().any(is_invisible_or_bidi) {
            return invalid("path must not contain bidirectional or zero-width characters");
        }
        let mut depth = 0;
        for segment in raw.split('/') {
            depth += 1;
            match segment {
                "" => {
                    return invalid(
                        "path must not contain empty segments ('//' or a trailing '/')",
                    );
                }
                "." | ".." => return invalid("path must not contain '.' or '..' segments"),
                _ => {}
            }
            if segment
                .trim_end_matches(['.', ' '])
                .eq_ignore_ascii_case(".git")
            {
                return invalid("path must not contain a '.git' segment");
            }
            if is_windows_reserved(segment) {
                return invalid(format!(
                    "`{segment}` is a name Windows reserves for a device (CON, PRN, AUX, NUL, \
                     COM1-9, LPT1-9, with any extension)"
                ));
            }
        }
        if depth > limits.max_path_depth {
            return invalid(format!(
                "path must be at most {} levels deep",
                limits.max_path_depth
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// How the path compares on a system that ignores case or Unicode normalisation (macOS,
    /// Windows): two paths with the same key are the same file there.
    pub fn fold(path: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        let lower: String = path.nfc().flat_map(char::to_lowercase).collect();
        lower.nfc().collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Every proper ancestor folder, shortest first: `a/b/c` → `a`, `a/b`.
    pub fn ancestors(&self) -> Vec<String> {
        self.0
            .match_indices('/')
            .map(|(i, _)| self.0[..i].to_owned())
            .collect()
    }

    /// True when `self` is `other` or lies below it.
    pub fn is_within(&self, other: &FilePath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for FilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A page of a list: `page` counts from 1, `per_page` from 1 to the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u32,
    pub per_page: u32,
}

impl PageRequest {
    pub fn parse(
        page: Option<i64>,
        per_page: Option<i64>,
        limits: &LimitSettings,
    ) -> Result<Self, Invalid> {
        let page = page.unwrap_or(1);
        let per_page = per_page.unwrap_or(i64::from(limits.default_per_page));
        if !(1..=1_000_000).contains(&page) {
            return invalid("page must be between 1 and 1000000");
        }
        if !(1..=i64::from(limits.max_per_page)).contains(&per_page) {
            return invalid(format!(
                "per_page must be between 1 and {}",
                limits.max_per_page
            ));
        }
        Ok(Self {
            page: page as u32,
            per_page: per_page as u32,
        })
    }

    pub fn limit(&self) -> i64 {
        i64::from(self.per_page)
    }

    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.per_page)
    }
}

/// One page of a list, in the API's `{items, page, per_page, total}` shape.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub per_page: u32,
    pub total: i64,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, request: PageRequest, total: i64) -> Self {
        Self {
            items,
            page: request.page,
            per_page: request.per_page,
            total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn limits() -> LimitSettings {
        Settings::with_overrides([("local_stack", "true".to_string())])
            .unwrap()
            .limits
    }

    #[test]
    fn ordinary_paths_are_accepted() {
        for ok in [
            "main.py",
            "src/util/io.py",
            "a b/ü.txt",
            ".hidden",
            "x..y",
            "....",
        ] {
            assert!(FilePath::parse(ok, &limits()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn unsafe_or_malformed_paths_are_refused() {
        let deep = vec!["d"; 17].join("/");
        let long = "a".repeat(256);
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "../a",
            "a/../../b",
            "..",
            "a\\b",
            "a\nb",
            "a\0b",
            "a\tb",
            &deep,
            &long,
        ] {
            assert!(FilePath::parse(bad, &limits()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_that_unpack_differently_elsewhere_are_refused() {
        for bad in [
            "a:b",
            "C:/x.py",
            "src/con",
            "CON",
            "nul.txt",
            "Aux.tar.gz",
            "lpt9.py",
            "com1",
            "x/PRN .txt",
            ".git",
            ".git/config",
            "src/.GIT/hooks/pre-commit",
            "a/.git./b",
            "evil\u{202E}txt.py",
            "a\u{2066}b",
            "zero\u{200B}width.py",
            "bom\u{FEFF}.py",
            "joiner\u{200D}.py",
        ] {
            let err = FilePath::parse(bad, &limits()).unwrap_err();
            assert!(!err.0.is_empty(), "{bad:?}");
        }
        for ok in [
            "console.py",
            "com10.py",
            "com0",
            "lpt.txt",
            "nullable.py",
            ".gitignore",
            "git/x",
            ".github/workflows/ci.yml",
            "a.git/b",
            "Straße/ü.txt",
        ] {
            assert!(FilePath::parse(ok, &limits()).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn folding_ignores_case_and_normalisation() {
        let composed = "caf\u{00E9}.py";
        let decomposed = "cafe\u{0301}.py";
        assert_ne!(composed, decomposed);
        assert_eq!(FilePath::fold(composed), FilePath::fold(decomposed));
        assert_eq!(FilePath::fold("Src/Main.PY"), FilePath::fold("src/main.py"));
        assert_ne!(FilePath::fold("a.py"), FilePath::fold("b.py"));
    }

    #[test]
    fn the_limits_are_inclusive() {
        let deep = vec!["d"; 16].join("/");
        let long = "a".repeat(255);
        assert!(FilePath::parse(&deep, &limits()).is_ok());
        assert!(FilePath::parse(&long, &limits()).is_ok());
    }

    #[test]
    fn ancestors_and_containment() {
        let p = FilePath::parse("a/b/c.txt", &limits()).unwrap();
        assert_eq!(p.ancestors(), ["a", "a/b"]);
        assert_eq!(p.name(), "c.txt");
        let a = FilePath::parse("a", &limits()).unwrap();
        let ab = FilePath::parse("ab", &limits()).unwrap();
        assert!(p.is_within(&a));
        assert!(!ab.is_within(&a));
        assert!(a.is_within(&a));
    }

    #[test]
    fn roles_are_stored_and_shown_by_the_same_name() {
        for role in [Role::Student, Role::Teacher, Role::Admin] {
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::Value::from(role.as_str())
            );
        }
    }

    #[test]
    fn usernames_and_names() {
        assert!(Username::parse("demo").is_ok());
        assert!(Username::parse("Demo").is_err());
        assert!(Username::parse("-x-").is_err());
        assert!(Username::parse("ab").is_err());
        assert!(TaskName::parse("  Lab 1  ").unwrap().as_str() == "Lab 1");
        assert!(TaskName::parse("   ").is_err());
        assert!(TaskName::parse(&"x".repeat(101)).is_err());
    }

    #[test]
    fn pages_are_bounded() {
        let l = limits();
        assert_eq!(
            PageRequest::parse(None, None, &l).unwrap(),
            PageRequest {
                page: 1,
                per_page: 20
            }
        );
        assert!(PageRequest::parse(Some(0), None, &l).is_err());
        assert!(PageRequest::parse(None, Some(101), &l).is_err());
        assert!(PageRequest::parse(None, Some(0), &l).is_err());
        assert_eq!(
            PageRequest::parse(Some(3), Some(10), &l).unwrap().offset(),
            20
        );
    }
}
