//! Reads a JSON document export without loading it: a serde visitor walks
//! the top-level object and hands each contact and message on as soon as
//! it is parsed.

use std::fmt;
use std::io::Read;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use super::import::{malformed, strip_position, Fault, Validator};
use super::reader::{Batcher, Item, Loc};
use super::{ContactRecord, Error, Header, MessageRecord};

/// Parses the JSON document read from `reader` into `out`.
pub(crate) fn read_document(reader: impl Read, out: &mut Batcher) -> Result<(), Error> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut stopped = false;
    let mut invalid = None;
    let visitor = Document {
        out,
        stopped: &mut stopped,
        invalid: &mut invalid,
        validator: Validator::default(),
    };
    let result = de::Deserializer::deserialize_map(&mut de, visitor).and_then(|()| de.end());
    if let Some(error) = invalid {
        return Err(error);
    }
    if stopped {
        // The importer found a problem first and reports it.
        return Ok(());
    }
    result.map_err(|e| {
        malformed(
            &format!("line {}, column {}", e.line(), e.column()),
            strip_position(&e),
        )
    })
}

struct Document<'o> {
    out: &'o mut Batcher,
    stopped: &'o mut bool,
    /// A record that failed validation, with its place.
    invalid: &'o mut Option<Error>,
    validator: Validator,
}

/// The header fields, gathered as they come.
#[derive(Default)]
struct Fields {
    format: Option<String>,
    version: Option<u32>,
    exported_at: Option<String>,
    public_key: Option<String>,
    secret_key: Option<String>,
    home_router: Option<String>,
    sent: bool,
}

impl<'de> Visitor<'de> for Document<'_> {
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
                "home_router" => fields.home_router = map.next_value()?,
                "contacts" => {
                    self.header(&mut fields)?;
                    map.next_value_seed(Each {
                        out: &mut *self.out,
                        stopped: &mut *self.stopped,
                        wrap: |i, c: ContactRecord| Some((Loc::Contact(i), Item::Contact(c))),
                        _t: std::marker::PhantomData,
                    })?;
                }
                "messages" => {
                    self.header(&mut fields)?;
                    let validator = &mut self.validator;
                    let invalid = &mut *self.invalid;
                    map.next_value_seed(Each {
                        out: &mut *self.out,
                        stopped: &mut *self.stopped,
                        wrap: |i, m: MessageRecord| {
                            let loc = Loc::Message(i);
                            match validator.check(m) {
                                Ok(m) => Some((loc, Item::Message(Box::new(m)))),
                                Err(f) => {
                                    *invalid = Some(fault_error(f, loc));
                                    None
                                }
                            }
                        },
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

impl Document<'_> {
    /// Sends the header once, before the first contact or message.
    fn header<E: de::Error>(&mut self, fields: &mut Fields) -> Result<(), E> {
        if fields.sent {
            return Ok(());
        }
        fields.sent = true;
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
            home_router: fields.home_router.take(),
        };
        send(self.out, self.stopped, Loc::Header, Item::Header(header))
    }
}

fn send<E: de::Error>(
    out: &mut Batcher,
    stopped: &mut bool,
    loc: Loc,
    item: Item,
) -> Result<(), E> {
    out.push(loc, item).map_err(|_| {
        *stopped = true;
        E::custom("stopped")
    })
}

fn fault_error(fault: Fault, loc: Loc) -> Error {
    super::import::fault_at(fault, &loc.to_string())
}

/// Deserialises an array, sending each element on as it comes.
struct Each<'o, T, W> {
    out: &'o mut Batcher,
    stopped: &'o mut bool,
    wrap: W,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T, W> DeserializeSeed<'de> for Each<'_, T, W>
where
    T: DeserializeOwned,
    W: FnMut(usize, T) -> Option<(Loc, Item)>,
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T, W> Visitor<'de> for Each<'_, T, W>
where
    T: DeserializeOwned,
    W: FnMut(usize, T) -> Option<(Loc, Item)>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<S: SeqAccess<'de>>(mut self, mut seq: S) -> Result<(), S::Error> {
        let mut index = 0;
        while let Some(element) = seq.next_element::<T>()? {
            let Some((loc, item)) = (self.wrap)(index, element) else {
                return Err(de::Error::custom("invalid record"));
            };
            send(self.out, self.stopped, loc, item)?;
            index += 1;
        }
        Ok(())
    }
}
