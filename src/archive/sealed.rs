//! Encrypted exports: the export wrapped in the age format
//! (<https://age-encryption.org/v1>), to a passphrase (scrypt) or to age
//! X25519 public keys. age authenticates every 64 KiB chunk and marks the
//! last one, so a changed or truncated file fails to read, and the import,
//! which reads to the end before it commits, imports nothing.

use std::fmt;
use std::io::{self, BufRead, Read, Write};

use age::secrecy::SecretString;

use super::Error;

/// The first bytes of every binary age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/";
/// The first bytes of an ASCII-armored age file, which this build does not
/// read.
const AGE_ARMOR: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
/// How many bytes [`kind`] needs to look at.
pub const SNIFF_LEN: usize = AGE_ARMOR.len();

/// The scrypt work factor (log2 N) of exports made with
/// `CHAT_TEST_WEAK_KDF=1`: for the test suite only.
const WEAK_LOG_N: u8 = 10;

/// How an export is encrypted.
pub enum Seal {
    /// To a passphrase (age's scrypt recipient, tuned by age to about a
    /// second of work).
    Passphrase(SecretString),
    /// To age X25519 public keys (`age1...`).
    Recipients(Vec<age::x25519::Recipient>),
}

impl fmt::Debug for Seal {
    // Never shows the passphrase.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seal::Passphrase(_) => f.write_str("Seal::Passphrase(..)"),
            Seal::Recipients(r) => write!(f, "Seal::Recipients({} keys)", r.len()),
        }
    }
}

impl Seal {
    /// Starts an age file on `out`: the caller writes the export into the
    /// result and must `finish()` it.
    pub(crate) fn wrap<'a>(
        &self,
        out: &'a mut dyn Write,
    ) -> Result<age::stream::StreamWriter<&'a mut dyn Write>, Error> {
        let encryptor = match self {
            Seal::Passphrase(passphrase) => {
                let mut recipient = age::scrypt::Recipient::new(passphrase.clone());
                if crate::keywrap::KdfParams::for_new_keys()
                    == crate::keywrap::KdfParams::WEAK_FOR_TESTS
                {
                    recipient.set_work_factor(WEAK_LOG_N);
                }
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            }
            Seal::Recipients(keys) => {
                age::Encryptor::with_recipients(keys.iter().map(|k| k as &dyn age::Recipient))
            }
        }
        .map_err(|e| Error::Encrypt(e.to_string()))?;
        encryptor.wrap_output(out).map_err(Error::Write)
    }
}

/// Parses an age public key given with `--recipient`.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    text.trim().parse::<age::x25519::Recipient>().map_err(|e| {
        format!("not an age public key ({e}): expected 'age1...' as printed by age-keygen")
    })
}

/// What the first bytes of an import say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain JSON or JSON Lines.
    Plain,
    /// A binary age file.
    Age,
    /// An ASCII-armored age file.
    ArmoredAge,
}

/// Tells an encrypted export from a plain one by its first bytes.
pub fn kind(prefix: &[u8]) -> Kind {
    if prefix.starts_with(AGE_MAGIC) {
        Kind::Age
    } else if prefix.starts_with(AGE_ARMOR) {
        Kind::ArmoredAge
    } else {
        Kind::Plain
    }
}

/// The input after [`sniff`]: the bytes it read, then the rest.
pub type Sniffed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads up to [`SNIFF_LEN`] bytes of `reader` and gives them back in front
/// of the rest, with what they say the input is.
pub fn sniff<R: Read>(mut reader: R) -> io::Result<(Kind, Sniffed<R>)> {
    let mut prefix = Vec::with_capacity(SNIFF_LEN);
    (&mut reader)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut prefix)?;
    Ok((kind(&prefix), io::Cursor::new(prefix).chain(reader)))
}

/// The key an encrypted export is opened with.
pub enum Key<'a> {
    /// Asked for only if the file is encrypted to a passphrase.
    Passphrase(&'a mut dyn FnMut() -> Result<SecretString, Error>),
    /// Identities read from an age identity file (`--identity`).
    Identities(Vec<Box<dyn age::Identity>>),
}

/// The export inside an age file. Every chunk is authenticated before a
/// byte of it is handed on; a changed or missing chunk is a read error
/// that [`explain`] names.
pub struct Opened<R>(age::stream::StreamReader<R>);

impl<R: BufRead> Read for Opened<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::other(Damaged(e.to_string())))
    }
}

/// A chunk of an encrypted export failed to authenticate.
#[derive(Debug, thiserror::Error)]
#[error("the encrypted export is damaged or truncated ({0})")]
struct Damaged(String);

/// Turns the read error of a damaged encrypted export, wherever the
/// importer met it, into [`Error::Decrypt`].
pub fn explain(e: Error) -> Error {
    let damaged = match &e {
        Error::Io { source, .. } => source.get_ref().is_some_and(|s| s.is::<Damaged>()),
        Error::Malformed { problem, .. } => problem.contains("the encrypted export is damaged"),
        _ => false,
    };
    if damaged {
        Error::Decrypt("the file is damaged or truncated".into())
    } else {
        e
    }
}

/// Opens an age file: checks its header with `key` and returns a reader of
/// the export inside. Damage further on shows as a read error from it.
pub fn open<R: BufRead>(input: R, key: Key<'_>) -> Result<Opened<R>, Error> {
    let decryptor = age::Decryptor::new_buffered(input).map_err(header_error)?;
    let scrypt = decryptor.is_scrypt();
    match key {
        Key::Passphrase(ask) => {
            if !scrypt {
                return Err(Error::Decrypt(
                    "it is encrypted to an age key, not a passphrase: pass --identity FILE \
                     with the matching age identity"
                        .into(),
                ));
            }
            let identity = age::scrypt::Identity::new(ask()?);
            decryptor
                .decrypt(std::iter::once(&identity as &dyn age::Identity))
                .map(Opened)
                .map_err(|e| match e {
                    age::DecryptError::DecryptionFailed
                    | age::DecryptError::KeyDecryptionFailed
                    | age::DecryptError::NoMatchingKeys => Error::WrongExportPassphrase,
                    other => header_error(other),
                })
        }
        Key::Identities(identities) => {
            if scrypt {
                return Err(Error::Decrypt(
                    "it is encrypted to a passphrase: drop --identity".into(),
                ));
            }
            decryptor
                .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
                .map(Opened)
                .map_err(|e| match e {
                    age::DecryptError::NoMatchingKeys => {
                        Error::Decrypt("none of the keys in the identity file opens it".into())
                    }
                    other => header_error(other),
                })
        }
    }
}

/// Reads an age identity file (as written by age-keygen).
pub fn read_identities(path: &std::path::Path) -> Result<Vec<Box<dyn age::Identity>>, Error> {
    let file =
        age::IdentityFile::from_file(path.to_string_lossy().into_owned()).map_err(|source| {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
    file.into_identities()
        .map_err(|e| Error::Decrypt(format!("cannot use the identity file: {e}")))
}

fn header_error(e: age::DecryptError) -> Error {
    match e {
        age::DecryptError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Error::Decrypt("the file is truncated".into())
        }
        age::DecryptError::InvalidMac | age::DecryptError::InvalidHeader => {
            Error::Decrypt("its header is damaged".into())
        }
        other => Error::Decrypt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_age_files_from_exports() {
        assert_eq!(kind(b"age-encryption.org/v1\n-> scrypt"), Kind::Age);
        assert_eq!(
            kind(b"-----BEGIN AGE ENCRYPTED FILE-----\n"),
            Kind::ArmoredAge
        );
        assert_eq!(kind(b"{\"format\":\"chat-p2p-export\""), Kind::Plain);
        assert_eq!(kind(b""), Kind::Plain);
    }

    #[test]
    fn sniffing_gives_every_byte_back() {
        let data = b"age-encryption.org/v1\nrest of the file".to_vec();
        let (k, mut r) = sniff(&data[..]).unwrap();
        assert_eq!(k, Kind::Age);
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        let (k, mut r) = sniff(&b"{}"[..]).unwrap();
        assert_eq!(k, Kind::Plain);
        back.clear();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"{}");
    }

    #[test]
    fn refuses_text_that_is_not_an_age_key() {
        assert!(parse_recipient("age1nope").is_err());
        let key = age::x25519::Identity::generate().to_public().to_string();
        assert!(parse_recipient(&key).is_ok());
    }
}
