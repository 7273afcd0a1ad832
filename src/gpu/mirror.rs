//! Structs that the host writes and a WGSL file declares too (kernel parameters, the step's
//! counts, the tokens of a pass). Each is declared through `wgsl_mirror!`, which names the WGSL
//! struct it must match; a test parses that file and checks that both have the same fields at
//! the same offsets and the same size, so that neither side can drift from the other.

/// Declares a `#[repr(C)]` struct mirrored by a WGSL struct: `"file", WgslName:` and then the
/// struct as usual (its derives included).
macro_rules! wgsl_mirror {
    (
        $file:literal, $wgsl:ident:
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty),*
        }

        #[cfg(test)]
        impl $crate::gpu::mirror::Mirror for $name {
            const FILE: &'static str = $file;
            const WGSL: &'static str = stringify!($wgsl);
            const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field))),*];
        }
    };
}
pub(crate) use wgsl_mirror;

/// What `wgsl_mirror!` records of a struct for the test.
#[cfg(test)]
pub(crate) trait Mirror {
    /// The WGSL file under `shaders/` that declares (or includes) the struct.
    const FILE: &'static str;
    /// Its name there.
    const WGSL: &'static str;
    /// Its fields and their offsets here.
    const FIELDS: &'static [(&'static str, usize)];
}

#[cfg(test)]
mod tests {
    use super::Mirror;
    use crate::gpu::ShaderKey;
    use crate::kernels::{
        attention, embed, linear, moe, rmsnorm, rope, router, router_fold, sample,
    };

    /// The fields (names and offsets) and size of `T`'s WGSL struct, as naga lays it out.
    fn wgsl_layout<T: Mirror>() -> (Vec<(String, usize)>, usize) {
        let src = ShaderKey::new(T::FILE, "main").source().unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{}: {}", T::FILE, e.emit_to_string(&src)));
        let ty = module
            .types
            .iter()
            .map(|(_, t)| t)
            .find(|t| t.name.as_deref() == Some(T::WGSL))
            .unwrap_or_else(|| panic!("{} declares no struct {}", T::FILE, T::WGSL));
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{} in {} is not a struct", T::WGSL, T::FILE);
        };
        let fields = members
            .iter()
            .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
            .collect();
        (fields, *span as usize)
    }

    fn check<T: Mirror>() {
        let (fields, size) = wgsl_layout::<T>();
        let ours: Vec<(String, usize)> =
            T::FIELDS.iter().map(|&(n, o)| (n.to_string(), o)).collect();
        assert_eq!(
            ours,
            fields,
            "{} (here) against {} in {}",
            std::any::type_name::<T>(),
            T::WGSL,
            T::FILE
        );
        assert_eq!(
            std::mem::size_of::<T>(),
            size,
            "the size of {} against {} in {}",
            std::any::type_name::<T>(),
            T::WGSL,
            T::FILE
        );
    }

    #[test]
    fn host_structs_match_their_wgsl() {
        check::<crate::gpu::StepCounts>();
        check::<crate::model::inputs::TokenInfo>();
        check::<attention::Params>();
        check::<embed::Params>();
        check::<linear::Params>();
        check::<moe::Params>();
        check::<rmsnorm::Params>();
        check::<rope::Params>();
        check::<router::Params>();
        check::<router_fold::Params>();
        check::<sample::Params>();
        check::<sample::SampleParams>();
    }
}
