//! The people file of `device-sim run --twofa-people`: CSV with the header
//! `user_id,mobile,passcode,locks`, one person a line, their locks
//! separated by `;`. It holds test passcodes: read into memory that is
//! wiped afterwards, and no error ever quotes a field.

use super::TwoFactorPerson;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The header line, column by column.
pub const PEOPLE_HEADER: [&str; 4] = ["user_id", "mobile", "passcode", "locks"];
/// Separator of the `locks` column.
pub const LOCK_SEPARATOR: char = ';';

/// Why a people file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PeopleFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the header must be {}", PEOPLE_HEADER.join(","))]
    Header,
    #[error("line {line}: not a CSV record of 4 fields")]
    Record { line: u64 },
    #[error("line {line}: person {user} has {problem}")]
    Person {
        line: u64,
        user: String,
        problem: &'static str,
    },
    #[error("line {line}: person {user} is listed twice")]
    Duplicate { line: u64, user: String },
}

/// Reads the people file at `path`.
pub fn read_people(path: impl AsRef<Path>) -> Result<Vec<TwoFactorPerson>, PeopleFileError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| PeopleFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_people(&Zeroizing::new(text))
}

/// Reads people from the text of a people file.
pub fn parse_people(text: &str) -> Result<Vec<TwoFactorPerson>, PeopleFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader.headers().map_err(|_| PeopleFileError::Header)?;
    if header.iter().ne(PEOPLE_HEADER) {
        return Err(PeopleFileError::Header);
    }
    let mut people = Vec::new();
    let mut users = HashSet::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            // csv's messages name positions and lengths, never content;
            // ours names the line only.
            Err(_) => return Err(PeopleFileError::Record { line }),
        }
        let line = record.position().map_or(line, |p| p.line());
        let [user_id, mobile, passcode, locks] = [0, 1, 2, 3].map(|i| record.get(i));
        let (Some(user_id), Some(mobile), Some(passcode), Some(locks), 4) =
            (user_id, mobile, passcode, locks, record.len())
        else {
            return Err(PeopleFileError::Record { line });
        };
        let person = TwoFactorPerson {
            user_id: user_id.to_string(),
            mobile: mobile.to_string(),
            passcode: Zeroizing::new(passcode.to_string()),
            locks: locks
                .split(LOCK_SEPARATOR)
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        };
        if let Some(problem) = person.problem() {
            return Err(PeopleFileError::Person {
                line,
                user: person.user_id.clone(),
                problem,
            });
        }
        if !users.insert(person.user_id.clone()) {
            return Err(PeopleFileError::Duplicate {
                line,
                user: person.user_id.clone(),
            });
        }
        people.push(person);
    }
    // The last record read still holds a passcode in csv's buffer.
    record.clear();
    Ok(people)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_people_file_reads_with_several_locks_each() {
        let text = "user_id,mobile,passcode,locks\n\
                    u-alice,+6591234567,48291637,L000001;L000002\n\
                    u-bob, +6598765432 ,00112233,L000003\n";
        let people = parse_people(text).unwrap();
        assert_eq!(people.len(), 2);
        assert_eq!(people[0].locks, vec!["L000001", "L000002"]);
        assert_eq!(people[1].mobile, "+6598765432");
        assert_eq!(people[1].passcode.as_str(), "00112233");
        let debug = format!("{people:?}");
        assert!(
            !debug.contains("48291637") && !debug.contains("91234567"),
            "{debug}"
        );
    }

    #[test]
    fn bad_lines_are_named_by_line_without_their_passcode() {
        let cases = [
            ("user,mobile,passcode,locks\n", "the header"),
            ("user_id,mobile,passcode,locks\nu1,+6591234567,4829x637,L1\n", "line 2: person u1 has a passcode"),
            ("user_id,mobile,passcode,locks\nu1,91234567,48291637,L1\n", "line 2: person u1 has a mobile"),
            ("user_id,mobile,passcode,locks\nu1,+6591234567,48291637,\n", "line 2: person u1 has no lock"),
            ("user_id,mobile,passcode,locks\nu1,+6591234567,48291637\n", "line 2: not a CSV record"),
            (
                "user_id,mobile,passcode,locks\nu1,+6591234567,48291637,L1\nu1,+6591234568,48291638,L2\n",
                "line 3: person u1 is listed twice",
            ),
        ];
        for (text, want) in cases {
            let err = parse_people(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
            assert!(!err.contains("4829"), "{err}");
        }
    }
}
