//! Reads a JSON document export without loading it: a serde visitor walks
//! the top-level object and hands each contact and message to the
//! [`Importer`] as soon as it is parsed.

use std::fmt;
use std::io::Read;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use super::import::{malformed, strip_position, Fault, Importer};
use super::{ContactRecord, Error, Header, MessageRecord};

/// Imports the JSON document read from `reader`.
pub(crate) fn read_document(importer: &mut Importer<'_>, reader: impl Read) -> Result<(), Error> {
    let mut fatal = None;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let visitor = Document {
        importer,
        fatal: &mut fatal,
    };
    let result = de::Deserializer::deserialize_map(&mut de, visitor).and_then(|()| de.end());
    if let Some(error) = fatal {
        return Err(error);
    }
    result.map_err(|e| {
        malformed(
            &format!("line {}, column {}", e.line(), e.column()),
            strip_position(&e),
        )
    })
}

struct Document<'i, 'a> {
    importer: &'i mut Importer<'a>,
    fatal: &'i mut Option<Error>,
}

/// The header fields, gathered as they come.
#[derive(Default)]
struct Fields {
    format: Option<String>,
    version: Option<u32>,
    exported_at: Option<String>,
    public_key: Option<String>,
    secret_key: Option<String>,
    done: bool,
}

impl<'de> Visitor<'de> for Document<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a chat-p2p export object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" => fields.format = Some(map.next_value()?),
                "version" => fields.version = Some(map.next_value()?),
                "exported_at" => fields.exported_at = map.next_value()?,
                "public_key" => fields.public_key = map.next_value()?,
                "secret_key" => fields.secret_key = map.next_value()?,
                "contacts" => {
                    self.header(&mut fields)?;
                    map.next_value_seed(Each::<ContactRecord, _> {
                        sink: |c| self.importer.contact(c),
                        fatal: &mut *self.fatal,
                        _t: std::marker::PhantomData,
                    })?;
                }
                "messages" => {
                    self.header(&mut fields)?;
                    map.next_value_seed(Each::<MessageRecord, _> {
                        sink: |m| self.importer.message(m),
                        fatal: &mut *self.fatal,
                        _t: std::marker::PhantomData,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.header(&mut fields)
    }
}

impl Document<'_, '_> {
    /// Hands the header over once, before the first contact or message.
    fn header<E: de::Error>(&mut self, fields: &mut Fields) -> Result<(), E> {
        if fields.done {
            return Ok(());
        }
        fields.done = true;
        let (Some(format), Some(version)) = (fields.format.take(), fields.version) else {
            return Err(E::custom(
                "\"format\" and \"version\" must come first: this is not a chat-p2p export",
            ));
        };
        let header = Header {
            format,
            version,
            exported_at: fields.exported_at.take(),
            public_key: fields.public_key.take(),
            secret_key: fields.secret_key.take(),
        };
        pass(self.importer.header(header), self.fatal)
    }
}

/// Turns a record's fault into a serde error: invalid input keeps its text
/// (serde_json adds the line); anything else is parked in `fatal`.
fn pass<E: de::Error>(result: Result<(), Fault>, fatal: &mut Option<Error>) -> Result<(), E> {
    match result {
        Ok(()) => Ok(()),
        Err(Fault::Invalid(text)) => Err(E::custom(text)),
        Err(Fault::Fatal(e)) => {
            let text = e.to_string();
            *fatal = Some(e);
            Err(E::custom(text))
        }
    }
}

/// Deserialises an array, handing each element to `sink` as it comes.
struct Each<'f, T, F> {
    sink: F,
    fatal: &'f mut Option<Error>,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T, F> DeserializeSeed<'de> for Each<'_, T, F>
where
    T: DeserializeOwned,
    F: FnMut(T) -> Result<(), Fault>,
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T, F> Visitor<'de> for Each<'_, T, F>
where
    T: DeserializeOwned,
    F: FnMut(T) -> Result<(), Fault>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<S: SeqAccess<'de>>(mut self, mut seq: S) -> Result<(), S::Error> {
        while let Some(item) = seq.next_element::<T>()? {
            pass((self.sink)(item), self.fatal)?;
        }
        Ok(())
    }
}
