//! One parameter-file line split into key and values (comments, `;`, file names), and the
//! typed readers of its values.

use crate::error::{Error, Location, Result};

/// One `Key values...` line after comment and `;` stripping.
pub(super) struct Line<'a> {
    pub(super) key: &'a str,
    pub(super) values: Vec<&'a str>,
    pub(super) rest: &'a str,
    pub(super) location: Location,
    /// A file name that ended in `;` (stripped here).
    pub(super) semicolon_name: bool,
}

impl Line<'_> {
    pub(super) fn err(&self, message: impl Into<String>) -> Error {
        Error::Parameter {
            location: self.location.clone(),
            key: self.key.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn need(&self, n: usize, what: &str) -> Result<()> {
        if self.values.len() < n {
            return Err(self.err(format!(
                "expected {n} value(s) ({what}), got {}",
                self.values.len()
            )));
        }
        Ok(())
    }

    pub(super) fn f64_at(&self, i: usize) -> Result<f64> {
        self.need(i + 1, "a number")?;
        let text = self.values[i];
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.err(format!("expected a finite number, got '{text}'"))),
        }
    }

    pub(super) fn f64(&self) -> Result<f64> {
        self.f64_at(0)
    }

    pub(super) fn int_at(&self, i: usize) -> Result<i64> {
        self.need(i + 1, "an integer")?;
        let text = self.values[i];
        // MIDAS reads integers with atoi / sscanf("%d"), which stop at the first character that
        // is not a digit: "2.0" is 2 there as here, but "1e3" is 1 and "53.5" is 53 there. Only
        // spellings both read alike are accepted (digits, then at most a '.' and zeros).
        let digits = match text.split_once('.') {
            Some((whole, zeros)) if zeros.bytes().all(|b| b == b'0') => whole,
            _ => text,
        };
        digits
            .parse::<i64>()
            .map_err(|_| self.err(format!("expected an integer, got '{text}'")))
    }

    pub(super) fn usize(&self) -> Result<usize> {
        let v = self.int_at(0)?;
        usize::try_from(v)
            .map_err(|_| self.err(format!("expected a non-negative integer, got {v}")))
    }

    pub(super) fn flag(&self) -> Result<bool> {
        Ok(self.int_at(0)? != 0)
    }

    /// A switch IntegratorZarrOMP tests with `== 1` (SumImages, SaveIndividualFrames): 2 is
    /// off there, so it is off here too.
    pub(super) fn exactly_one(&self) -> Result<bool> {
        Ok(self.int_at(0)? == 1)
    }

    /// The first word of the value: DetectorMapper reads file names and words with
    /// `sscanf("%s %s")`, so anything after them is ignored there too.
    pub(super) fn text(&self) -> Result<String> {
        match self.values.first() {
            Some(word) => Ok(word.to_string()),
            None => Err(self.err("expected a value, got nothing")),
        }
    }

    /// The value, one of `choices`.
    pub(super) fn one_of(&self, choices: &[&str]) -> Result<String> {
        let value = self.text()?;
        if !choices.contains(&value.as_str()) {
            return Err(self.err(format!("expected {}, got '{value}'", choices.join(" or "))));
        }
        Ok(value)
    }
}

/// Keys whose value is a file name: a '#' inside it is part of the name.
const FILE_KEYS: [&str; 8] = [
    "MaskFile",
    "MaskFN",
    "DistortionFile",
    "DistortionFN",
    "ResidualCorrectionMap",
    "PanelShiftsFile",
    "Dark",
    "FlatFile",
];

pub(super) fn split_line<'a>(raw: &'a str, location: Location) -> Option<Line<'a>> {
    // A '#' starts a comment (`RMax 60#outer` is 60, as MIDAS's sscanf reads it), except inside
    // a file name (/data/run#3/mask.tif), where only a word beginning with '#' does.
    let start = raw.len() - raw.trim_start().len();
    let first_end = raw[start..]
        .find(char::is_whitespace)
        .map_or(raw.len(), |i| start + i);
    // A '#' inside the first word makes it another word (`Lsd#old` is no Lsd line for C, which
    // compares the whole key), not a comment.
    let anywhere = match raw.find('#') {
        Some(i) if i > start && i < first_end => raw[first_end..].find('#').map(|j| first_end + j),
        found => found,
    };
    let key = raw[..anywhere.unwrap_or(raw.len())]
        .split_whitespace()
        .next();
    let comment = if key.is_some_and(|k| FILE_KEYS.contains(&k)) {
        raw.char_indices()
            .find(|&(i, c)| {
                c == '#' && raw[..i].chars().next_back().is_none_or(char::is_whitespace)
            })
            .map(|(i, _)| i)
    } else {
        anywhere
    };
    let without_comment = match comment {
        Some(pos) => &raw[..pos],
        None => raw,
    };
    let trimmed = without_comment.trim().trim_end_matches(';').trim_end();
    let mut parts = trimmed.splitn(2, char::is_whitespace);
    let key = parts.next()?;
    if key.is_empty() {
        return None;
    }
    let rest = parts.next().unwrap_or("").trim();
    let values = rest
        .split_whitespace()
        .map(|v| v.trim_end_matches(';'))
        .collect();
    // DetectorMapper reads a file name with `%s`, so a `;` after it is part of the name there.
    let semicolon_name = FILE_KEYS.contains(&key) && without_comment.trim_end().ends_with(';');
    Some(Line {
        key,
        values,
        rest,
        location,
        semicolon_name,
    })
}
