//! `ZonesBuilder`: the declarations a master makes before it forks.

use std::fmt;
use std::sync::Arc;

use super::dir::{check_name, HEADER_LEN};
use super::{Zone, ZoneInit, Zones};
use crate::error::Error;
use crate::os::Backend;
use crate::region::Region;
use crate::slab::{Pool, SLAB_PAGE};

/// A zone's init callback: runs once in the process that builds or reloads
/// the zones, before any worker forks. See [`ZoneInit`] for what it is told.
pub type InitFn = dyn Fn(&Zone<'_>, ZoneInit<'_>) -> Result<(), Error> + Send + Sync;

/// Room left in a region for zones made at run time, unless
/// [`ZonesBuilder::slack`] says otherwise: 4 MiB. A mapping reserves address
/// space, not memory, so unused slack costs nothing resident.
pub const DEFAULT_SLACK: usize = 4 << 20;

#[derive(Clone)]
pub(crate) struct Decl {
    pub name: String,
    /// Rounded up to whole slab pages; 0 = referenced but not sized yet.
    pub size: usize,
    pub tag: u64,
    pub noreuse: bool,
    pub init: Option<Arc<InitFn>>,
}

/// Declares the zones of a region: `Zones::builder().zone(..).build()`.
///
/// ```
/// use shmzone::Zones;
/// let zones = Zones::builder()
///     .zone("limits", 1 << 20)
///     .zone_with_tag("sessions", 256 << 10, 7)
///     .init("limits", |zone, _| {
///         let counter = zone.alloc_value(0u64).expect("room for a counter");
///         zone.set_root(zone.offset_of(counter.as_ptr().cast()).unwrap());
///         Ok(())
///     })
///     .build()?;
/// assert_eq!(zones.get("limits").unwrap().size(), 1 << 20);
/// assert_ne!(zones.get("limits").unwrap().root(), 0);
/// # Ok::<(), shmzone::Error>(())
/// ```
#[derive(Clone)]
pub struct ZonesBuilder {
    pub(crate) backend: Backend,
    pub(crate) slack: usize,
    pub(crate) decls: Vec<Decl>,
    pub(crate) errors: Vec<ErrorSlot>,
}

/// A declaration error kept until `build` (builder methods chain).
#[derive(Clone)]
pub(crate) enum ErrorSlot {
    Size {
        name: String,
        size: usize,
        declared: usize,
    },
    Tag {
        name: String,
    },
    Name {
        name: String,
        reason: &'static str,
    },
    NoSuchZone {
        name: String,
    },
}

impl ErrorSlot {
    fn into_error(self) -> Error {
        match self {
            ErrorSlot::Size {
                name,
                size,
                declared,
            } => Error::ZoneSizeConflict {
                name,
                size,
                declared,
            },
            ErrorSlot::Tag { name } => Error::ZoneTagConflict { name },
            ErrorSlot::Name { name, reason } => Error::ZoneName { name, reason },
            ErrorSlot::NoSuchZone { name } => Error::NoSuchZone { name },
        }
    }
}

impl Default for ZonesBuilder {
    fn default() -> Self {
        ZonesBuilder {
            backend: Backend::default(),
            slack: DEFAULT_SLACK,
            decls: Vec::new(),
            errors: Vec::new(),
        }
    }
}

impl fmt::Debug for ZonesBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let zones: Vec<(&str, usize, u64)> = self
            .decls
            .iter()
            .map(|d| (d.name.as_str(), d.size, d.tag))
            .collect();
        f.debug_struct("ZonesBuilder")
            .field("backend", &self.backend)
            .field("slack", &self.slack)
            .field("zones", &zones)
            .finish()
    }
}

/// `size` rounded up to whole slab pages (saturating: a huge size fails
/// later as "region full" or an OS error, never by overflow).
pub(crate) fn round_zone(size: usize) -> usize {
    size.checked_add(SLAB_PAGE - 1)
        .map_or(usize::MAX & !(SLAB_PAGE - 1), |n| n & !(SLAB_PAGE - 1))
}

impl ZonesBuilder {
    /// The backend of the region (default: [`Backend::default()`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Room for zones made at run time with [`Zones::get_or_create`]
    /// (default [`DEFAULT_SLACK`]).
    pub fn slack(mut self, bytes: usize) -> Self {
        self.slack = bytes;
        self
    }

    /// Declares a zone with tag 0. See [`ZonesBuilder::zone_with_tag`].
    pub fn zone(self, name: &str, size: usize) -> Self {
        self.zone_with_tag(name, size, 0)
    }

    /// Declares a zone of `size` bytes (rounded up to whole 4 KiB slab
    /// pages), as nginx's `ngx_shared_memory_add` does:
    ///
    /// - the same name and tag again is the same zone;
    /// - size 0 is a reference: the size must come from another declaration;
    /// - another non-zero size is an error at `build`: "the size N of shared
    ///   memory zone "X" conflicts with already declared size M";
    /// - another tag is an error: "shared zone "X" is already declared for a
    ///   different use".
    pub fn zone_with_tag(mut self, name: &str, size: usize, tag: u64) -> Self {
        if let Err(Error::ZoneName { name, reason }) = check_name(name.as_bytes()) {
            self.errors.push(ErrorSlot::Name { name, reason });
            return self;
        }
        let size = if size == 0 { 0 } else { round_zone(size) };
        match self.decls.iter_mut().find(|d| d.name == name) {
            Some(d) if d.tag != tag => self.errors.push(ErrorSlot::Tag {
                name: name.to_string(),
            }),
            Some(d) if d.size == 0 => d.size = size,
            Some(d) if size != 0 && d.size != size => self.errors.push(ErrorSlot::Size {
                name: name.to_string(),
                size,
                declared: d.size,
            }),
            Some(_) => {}
            None => self.decls.push(Decl {
                name: name.to_string(),
                size,
                tag,
                noreuse: false,
                init: None,
            }),
        }
        self
    }

    /// Marks a declared zone `noreuse`: every reload makes it afresh (its
    /// init callback gets the old zone as [`ZoneInit::Recreated`]).
    pub fn noreuse(mut self, name: &str) -> Self {
        match self.decls.iter_mut().find(|d| d.name == name) {
            Some(d) => d.noreuse = true,
            None => self.errors.push(ErrorSlot::NoSuchZone {
                name: name.to_string(),
            }),
        }
        self
    }

    /// Sets the init callback of a declared zone. It runs once in the
    /// building (or reloading) process, after every zone is carved.
    pub fn init<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&Zone<'_>, ZoneInit<'_>) -> Result<(), Error> + Send + Sync + 'static,
    {
        match self.decls.iter_mut().find(|d| d.name == name) {
            Some(d) => d.init = Some(Arc::new(f)),
            None => self.errors.push(ErrorSlot::NoSuchZone {
                name: name.to_string(),
            }),
        }
        self
    }

    /// Declares a zone of `size` bytes holding a shared dictionary
    /// ([`Dict`](crate::dict::Dict)): a fresh zone gets an empty one, a
    /// zone a reload kept is checked to hold one; a zone a reload resized
    /// or recreated gets an empty one (the old contents are not copied).
    /// Workers find it with `Dict::open(&zones.get(name).unwrap())`.
    ///
    /// ```
    /// let zones = shmzone::Zones::builder().dict("cache", 1 << 20).build()?;
    /// let d = shmzone::dict::Dict::open(&zones.get("cache").unwrap())?;
    /// d.set(b"k", 1i64, 0, 0)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dict(self, name: &str, size: usize) -> Self {
        use crate::dict::Dict;
        self.zone(name, size).init(name, |zone, how| {
            match how {
                ZoneInit::Reused => Dict::open(zone).map(drop),
                _ => Dict::init(zone).map(drop),
            }
            .map_err(Error::from)
        })
    }

    /// The declarations, checked: the first conflict, a zone never sized,
    /// or a zone below the minimum is an error.
    pub(crate) fn checked(&self) -> Result<&[Decl], Error> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone().into_error());
        }
        for d in &self.decls {
            if d.size == 0 {
                return Err(Error::ZeroSizeZone {
                    name: d.name.clone(),
                });
            }
            if d.size < Pool::MIN_SIZE {
                return Err(Error::ZoneTooSmall {
                    name: d.name.clone(),
                    size: d.size,
                    min: Pool::MIN_SIZE,
                });
            }
        }
        if self.decls.len() > super::dir::MAX_ZONES {
            return Err(Error::DirectoryFull {
                max: super::dir::MAX_ZONES,
            });
        }
        Ok(&self.decls)
    }

    /// The region length [`build`](Self::build) maps: the header, the
    /// region pool's own bookkeeping, every declared zone and the slack.
    pub fn region_len(&self) -> usize {
        let zones: usize = self
            .decls
            .iter()
            .fold(0usize, |a, d| a.saturating_add(d.size));
        region_len_for(zones.saturating_add(round_zone(self.slack)))
    }

    /// Maps a region with the builder's backend and formats it.
    ///
    /// # Errors
    /// A declaration error (see [`zone_with_tag`](Self::zone_with_tag)), a
    /// zone smaller than [`Pool::MIN_SIZE`] ("zone "X" is too small"), an
    /// init callback's error, or the OS refusing the mapping.
    pub fn build(self) -> Result<Zones, Error> {
        self.checked()?;
        let region = Region::with_backend(self.region_len(), self.backend)?;
        self.build_in(region)
    }

    /// Formats an existing region (for example a named one) of at least
    /// [`region_len`](Self::region_len) bytes with these zones. Whatever the
    /// region held is overwritten.
    ///
    /// # Errors
    /// As [`build`](Self::build), plus [`Error::RegionFull`] when the
    /// region is too small for the declared zones.
    pub fn build_in(self, region: Region) -> Result<Zones, Error> {
        self.checked()?;
        let zones = Zones::format(region)?;
        zones.carve_declared(&self)?;
        Ok(zones)
    }
}

/// A region length that holds `payload` bytes of zones: the header, the
/// region pool's header and descriptors (bounded by 1/32 of the pages plus
/// a minimum pool), whole pages.
pub(crate) fn region_len_for(payload: usize) -> usize {
    let pages = payload / SLAB_PAGE;
    HEADER_LEN
        .saturating_add(payload)
        .saturating_add(pages / 32 * SLAB_PAGE)
        .saturating_add(Pool::MIN_SIZE)
}
