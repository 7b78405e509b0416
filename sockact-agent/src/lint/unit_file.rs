//! Unit files as systemd reads them (systemd.syntax(7)): sections, `Key=value` entries, comments
//! (`#`, `;`), lines continued with a trailing backslash, and drop-ins (`NAME.d/*.conf`) whose
//! entries come after the unit's own. Every entry remembers its file and line, the evidence of
//! a lint finding.
use std::path::{Path, PathBuf};

/// One `Key=value` line (continuations joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub file: PathBuf,
    /// 1-based; the first line of a continued entry.
    pub line: usize,
    /// The line as written (continuations joined), for evidence.
    pub text: String,
}

/// A section header, kept to point at a section that lacks a setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub section: String,
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Clone, Debug, Default)]
pub struct UnitFile {
    /// `web.socket`, `echo@.service`.
    pub name: String,
    pub path: PathBuf,
    pub entries: Vec<Entry>,
    pub headers: Vec<Header>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The entries and headers of one file's text.
pub fn parse_text(text: &str, file: &Path) -> (Vec<Entry>, Vec<Header>) {
    let mut entries = Vec::new();
    let mut headers = Vec::new();
    let mut section = String::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        let (start, joined) = match pending.take() {
            Some((start, mut acc)) => {
                // systemd keeps comments inside a continued value out of it.
                if line.starts_with('#') || line.starts_with(';') {
                    pending = Some((start, acc));
                    continue;
                }
                acc.push(' ');
                acc.push_str(line);
                (start, acc)
            }
            None => {
                if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                    continue;
                }
                if line.starts_with('[') && line.ends_with(']') {
                    section = line[1..line.len() - 1].trim().to_owned();
                    headers.push(Header {
                        section: section.clone(),
                        file: file.to_owned(),
                        line: line_no,
                    });
                    continue;
                }
                (line_no, line.to_owned())
            }
        };
        if let Some(open) = joined.strip_suffix('\\') {
            pending = Some((start, open.trim_end().to_owned()));
            continue;
        }
        if let Some((key, value)) = joined.split_once('=') {
            entries.push(Entry {
                section: section.clone(),
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
                file: file.to_owned(),
                line: start,
                text: joined.clone(),
            });
        }
    }
    if let Some((start, joined)) = pending
        && let Some((key, value)) = joined.split_once('=')
    {
        entries.push(Entry {
            section,
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
            file: file.to_owned(),
            line: start,
            text: joined.clone(),
        });
    }
    (entries, headers)
}

impl UnitFile {
    /// Reads a unit file and its drop-ins (already ordered).
    pub fn read(name: &str, path: &Path, dropins: &[PathBuf]) -> Result<UnitFile, ParseError> {
        let mut unit = UnitFile {
            name: name.to_owned(),
            path: path.to_owned(),
            ..Default::default()
        };
        for file in std::iter::once(path).chain(dropins.iter().map(PathBuf::as_path)) {
            let text = std::fs::read_to_string(file).map_err(|source| ParseError::Read {
                path: file.display().to_string(),
                source,
            })?;
            let (entries, headers) = parse_text(&text, file);
            unit.entries.extend(entries);
            unit.headers.extend(headers);
        }
        Ok(unit)
    }

    /// Expands the `%` specifiers systemd expands in values (systemd.unit(5)) that a unit's
    /// name and its manager determine: `%n %N %p %P %i %I %j %J %f`, the directories (`%t %S
    /// %C %L %E %T %V %h`, the system manager's, or for a user manager those that do not
    /// depend on who the user is) and `%y %Y %%`. Others (host, user, boot) stay as written.
    /// The evidence text keeps what the file says.
    pub fn expand_specifiers(&mut self, user: bool) {
        let name = self.name.clone();
        let path = self.path.clone();
        for e in &mut self.entries {
            if e.value.contains('%') {
                e.value = expand(&e.value, &name, &path, user);
            }
        }
    }

    /// The effective value of a single-valued setting: the last one.
    pub fn get(&self, section: &str, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.section == section && e.key == key)
    }

    /// The entries of a list setting in effect: an empty assignment resets the list.
    pub fn list(&self, section: &str, key: &str) -> Vec<&Entry> {
        let mut found: Vec<&Entry> = Vec::new();
        for e in self
            .entries
            .iter()
            .filter(|e| e.section == section && e.key == key)
        {
            if e.value.is_empty() {
                found.clear();
            } else {
                found.push(e);
            }
        }
        found
    }

    /// The entries of several list settings, each with its own resets, in file order.
    pub fn lists(&self, section: &str, keys: &[&str]) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = keys.iter().flat_map(|k| self.list(section, k)).collect();
        all.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        all
    }

    /// The words of a space-separated list setting (`After=a b`, several lines).
    pub fn words(&self, section: &str, key: &str) -> Vec<String> {
        self.list(section, key)
            .iter()
            .flat_map(|e| e.value.split_whitespace().map(str::to_owned))
            .collect()
    }

    /// A boolean setting as systemd reads it.
    pub fn flag(&self, section: &str, key: &str) -> Option<bool> {
        self.get(section, key).map(|e| {
            matches!(
                e.value.to_ascii_lowercase().as_str(),
                "1" | "yes" | "true" | "on"
            )
        })
    }

    /// The header of a section (where a missing setting belongs).
    pub fn header(&self, section: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.section == section)
    }

    /// `socket`, `service`, ...
    pub fn kind(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or_default()
    }

    /// The name without its suffix (`web` of `web.socket`; `echo@` of `echo@.service`).
    pub fn stem(&self) -> &str {
        self.name
            .rsplit_once('.')
            .map_or(self.name.as_str(), |(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_comments_continuations_and_resets() {
        let text = "\
# a comment
[Unit]
Description=web
After=a.service \\
      b.service

[Socket]
; another
ListenStream=127.0.0.1:80
ListenStream=
ListenStream=127.0.0.1:81
ListenDatagram=127.0.0.1:82
Accept=yes
";
        let (entries, headers) = parse_text(text, Path::new("web.socket"));
        let unit = UnitFile {
            name: "web.socket".into(),
            path: "web.socket".into(),
            entries,
            headers,
        };
        assert_eq!(unit.words("Unit", "After"), ["a.service", "b.service"]);
        assert_eq!(unit.get("Unit", "After").unwrap().line, 4);
        let listen = unit.lists("Socket", &["ListenStream", "ListenDatagram"]);
        let lines: Vec<usize> = listen.iter().map(|e| e.line).collect();
        assert_eq!(lines, [11, 12], "the empty assignment reset the first");
        assert_eq!(unit.flag("Socket", "Accept"), Some(true));
        assert_eq!(unit.header("Socket").unwrap().line, 7);
        assert_eq!(unit.kind(), "socket");
        assert_eq!(unit.stem(), "web");
    }

    #[test]
    fn an_unfinished_continuation_at_the_end_is_kept() {
        let (entries, _) = parse_text("[Service]\nExecStart=/bin/true \\", Path::new("x"));
        assert_eq!(entries[0].value, "/bin/true");
    }
}

/// `value` with the specifiers of unit `name` (read from `path`) expanded.
fn expand(value: &str, name: &str, path: &Path, user: bool) -> String {
    let (full, _kind) = name.rsplit_once('.').unwrap_or((name, ""));
    let (prefix, instance) = match full.split_once('@') {
        Some((p, i)) => (p, i),
        None => (full, ""),
    };
    let last = prefix.rsplit('-').next().unwrap_or(prefix);
    let file = if instance.is_empty() {
        format!("/{}", unescape(prefix))
    } else {
        format!("/{}", unescape(instance))
    };
    let dir = |system: &str| -> Option<String> { (!user).then(|| system.to_owned()) };
    // A template has no instance yet: systemd expands %i when it makes one.
    let template = name.contains("@.");
    let of_instance = |v: String| -> Option<String> { (!template).then_some(v) };
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let expanded = match spec {
            '%' => Some("%".to_owned()),
            'n' => Some(name.to_owned()),
            'N' => Some(full.to_owned()),
            'p' => Some(prefix.to_owned()),
            'P' => Some(unescape(prefix)),
            'i' => of_instance(instance.to_owned()),
            'I' => of_instance(unescape(instance)),
            'j' => Some(last.to_owned()),
            'J' => Some(unescape(last)),
            'f' => of_instance(file.clone()),
            'y' => Some(path.display().to_string()),
            'Y' => path.parent().map(|p| p.display().to_string()),
            't' => dir("/run"),
            'S' => dir("/var/lib"),
            'C' => dir("/var/cache"),
            'L' => dir("/var/log"),
            'E' => dir("/etc"),
            'h' => dir("/root"),
            'T' => Some("/tmp".to_owned()),
            'V' => Some("/var/tmp".to_owned()),
            _ => None,
        };
        match expanded {
            Some(v) => out.push_str(&v),
            None => {
                out.push('%');
                out.push(spec);
            }
        }
    }
    out
}

/// A unit name part as the text it escapes (systemd-escape(1)): `-` is `/`, `\xNN` a byte.
fn unescape(s: &str) -> String {
    let mut bytes = Vec::with_capacity(s.len());
    let raw = s.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'-' => bytes.push(b'/'),
            b'\\'
                if raw.get(i + 1) == Some(&b'x')
                    && let Some(b) = raw
                        .get(i + 2..i + 4)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok()) =>
            {
                bytes.push(b);
                i += 3;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod specifier_tests {
    use super::*;

    #[test]
    fn specifiers_expand_as_systemd_expands_them() {
        let path = Path::new("/lib/systemd/system/getty@.service");
        let e = |v: &str, name: &str| expand(v, name, path, false);
        assert_eq!(e("%t/%N.sock", "foo.socket"), "/run/foo.sock");
        assert_eq!(
            e("%i|%I|%p|%n", "getty@tty1.service"),
            "tty1|tty1|getty|getty@tty1.service"
        );
        assert_eq!(
            e("%I %f", "systemd-fsck@dev-disk-by\\x2duuid-1234.service"),
            "dev/disk/by-uuid/1234 /dev/disk/by-uuid/1234"
        );
        assert_eq!(e("100%% %Z %", "a.service"), "100% %Z %");
        assert_eq!(e("%Y", "a.service"), "/lib/systemd/system");
        // A template has no instance to expand yet.
        assert_eq!(
            e("BindsTo=x@%i.service", "x@.socket"),
            "BindsTo=x@%i.service"
        );
        // A user manager's runtime directory depends on the user: left as written.
        assert_eq!(
            expand("%t/pipewire-0", "pipewire.socket", path, true),
            "%t/pipewire-0"
        );
    }
}
