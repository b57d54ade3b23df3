//! Type id allocation.
//!
//! Go hands out gob type ids process-wide, the first time any encoder meets a type,
//! starting at 65. When it builds the description of a type it numbers a struct
//! before its fields, but a slice, array or map after its element (and key) types.
//! [`TypeRegistry`] reproduces that numbering. Every [`Encoder`](crate::Encoder)
//! has one; encoders that share a registry number types like one Go process, which
//! is what byte-for-byte comparisons with Go output need. Receivers map ids per
//! stream, so the ids themselves never matter for interoperability.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::types::{builtin, Type};

/// Shared, thread-safe table of type ids. Cloning gives another handle to the same table.
#[derive(Clone, Default)]
pub struct TypeRegistry {
    inner: Arc<Mutex<RegistryInner>>,
}

#[derive(Default)]
pub(crate) struct RegistryInner {
    ids: HashMap<Type, u32>,
    last: u32,
}

impl TypeRegistry {
    /// A fresh registry; the first user type gets id 65.
    pub fn new() -> TypeRegistry {
        TypeRegistry::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        // A panic while holding the lock cannot leave the table inconsistent
        // (entries are inserted whole), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of `ty`, assigning ids to it and its component types if needed.
    pub fn id_of(&self, ty: &Type) -> Result<u32> {
        self.lock().assign(ty)
    }

    /// Number of user types registered so far.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// Whether no user type is registered yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RegistryInner {
    fn next(&mut self) -> Result<u32> {
        let base = self.last.max(builtin::FIRST_USER_ID);
        let id = base.checked_add(1).ok_or(Error::TypeIdsExhausted)?;
        if id > i32::MAX as u32 {
            return Err(Error::TypeIdsExhausted);
        }
        self.last = id;
        Ok(id)
    }

    pub(crate) fn get(&self, ty: &Type) -> Option<u32> {
        ty.builtin_id().or_else(|| self.ids.get(ty).copied())
    }

    pub(crate) fn assign(&mut self, ty: &Type) -> Result<u32> {
        if let Some(id) = self.get(ty) {
            return Ok(id);
        }
        let id = match ty {
            Type::Struct(st) => {
                // Structs are numbered before their fields.
                let id = self.next()?;
                self.ids.insert(ty.clone(), id);
                for f in &st.fields {
                    self.assign(&f.ty)?;
                }
                id
            }
            Type::Slice { elem, .. } | Type::Array { elem, .. } => {
                self.assign(elem)?;
                let id = self.next()?;
                self.ids.insert(ty.clone(), id);
                id
            }
            Type::Map { key, elem, .. } => {
                self.assign(key)?;
                self.assign(elem)?;
                let id = self.next()?;
                self.ids.insert(ty.clone(), id);
                id
            }
            Type::External { .. } => {
                let id = self.next()?;
                self.ids.insert(ty.clone(), id);
                id
            }
            // Built-in types were answered by `get`.
            _ => return Err(Error::Unsupported("unregistered built-in")),
        };
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Field;

    #[test]
    fn numbering_follows_go() {
        let reg = TypeRegistry::new();
        let conn = Type::structure("connectionSummary", vec![Field::new("A", Type::Bytes)]);
        let peer = Type::structure("peerSummary", vec![Field::new("B", Type::String)]);
        assert_eq!(
            reg.id_of(&Type::map(Type::String, Type::String)).unwrap(),
            65
        );
        assert_eq!(reg.id_of(&peer).unwrap(), 66);
        // The slice comes after its element.
        assert_eq!(reg.id_of(&Type::slice(conn.clone())).unwrap(), 68);
        assert_eq!(reg.id_of(&conn).unwrap(), 67);
        assert_eq!(reg.id_of(&Type::Uint).unwrap(), 3);
        assert_eq!(reg.len(), 4);
        // A struct comes before its fields.
        let outer = Type::structure("outer", vec![Field::new("P", Type::slice(Type::Int))]);
        assert_eq!(reg.id_of(&outer).unwrap(), 69);
        assert_eq!(reg.id_of(&Type::slice(Type::Int)).unwrap(), 70);
    }
}
