//! Code generation: a checked [`Architecture`] and its [`Plan`] become a named struct
//! whose fields are the runtime's building blocks, sized by const generics.
//!
//! Never reports user errors (those are `check.rs`'s job). The output grows with the
//! number of blocks, not layers: a dense block is one field whose type carries its size.

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote, ToTokens};

use crate::arch::{Architecture, Head, Stem};
use crate::plan::{Plan, StagePlan};

/// How the generated item is declared: name, attributes, visibility.
pub struct ItemInfo<'a> {
    /// The struct's name.
    pub name: &'a syn::Ident,
    /// Attributes and doc comments passed through.
    pub attrs: &'a [syn::Attribute],
    /// Visibility of the struct.
    pub vis: &'a syn::Visibility,
}

/// The default path generated code uses to reach the runtime.
pub fn default_runtime_path() -> TokenStream {
    quote!(::densenet::runtime)
}

fn lit(n: usize) -> Literal {
    Literal::usize_unsuffixed(n)
}

/// Generates the model struct and its impl. `rt` is the path of the runtime crate.
pub fn expand_model(
    item: &ItemInfo<'_>,
    arch: &Architecture,
    plan: &Plan,
    rt: &TokenStream,
) -> TokenStream {
    let ItemInfo { name, attrs, vis } = item;
    let growth = lit(arch.growth);
    let bn_size = lit(arch.bottleneck.unwrap_or(0));

    let c = lit(plan.head_channels);
    let classes = lit(arch.classes);
    let (head_ty, head_doc, output_ty, output_view) = match arch.head {
        Head::Classifier => (
            quote!(#rt::blocks::ClassifierHead<#c, #classes>),
            format!(
                " Head: BN, ReLU, global average pool, linear {} → {}.",
                plan.head_channels, arch.classes
            ),
            quote!(#rt::ndarray::Array2<f32>),
            quote!(#rt::ndarray::ArrayViewMut2<'_, f32>),
        ),
        Head::Avg => (
            quote!(#rt::blocks::AvgPoolHead<#c>),
            format!(
                " Head: BN, ReLU, global average pool to {} features.",
                plan.head_channels
            ),
            quote!(#rt::ndarray::Array2<f32>),
            quote!(#rt::ndarray::ArrayViewMut2<'_, f32>),
        ),
        Head::Max => (
            quote!(#rt::blocks::MaxPoolHead<#c>),
            format!(
                " Head: BN, ReLU, global max pool to {} features.",
                plan.head_channels
            ),
            quote!(#rt::ndarray::Array2<f32>),
            quote!(#rt::ndarray::ArrayViewMut2<'_, f32>),
        ),
        Head::None => (
            quote!(#rt::blocks::FeatureMapHead<#c>),
            format!(
                " Head: BN, ReLU; the output is the final {}-channel feature map (NCHW).",
                plan.head_channels
            ),
            quote!(#rt::ndarray::Array4<f32>),
            quote!(#rt::ndarray::ArrayViewMut4<'_, f32>),
        ),
    };
    // One field per stage, in the order of `Plan::stages`, with the stage index its
    // `BuildingBlock` view takes.
    let mut fields = Vec::new();
    let mut visits = Vec::new();
    for stage in plan.stages() {
        let (field, index, ty, doc) = match stage {
            StagePlan::Stem(stem) => {
                let (c_in, c_out) = (lit(stem.c_in), lit(stem.c_out));
                let (ty, what) = match arch.stem {
                    Stem::ImageNet => (
                        quote!(#rt::blocks::ImageNetStem<#c_in, #c_out>),
                        "Stem: 7x7/2 conv, BN, ReLU, 3x3/2 max pool",
                    ),
                    Stem::Cifar => (
                        quote!(#rt::blocks::CifarStem<#c_in, #c_out>),
                        "Stem: 3x3 conv",
                    ),
                };
                let doc = format!(
                    " {what}; {} → {} channels, {}x{}.",
                    stem.c_in, stem.c_out, stem.height, stem.width
                );
                (quote!(stem), 0, ty, doc)
            }
            StagePlan::Block { index, plan: block } => {
                let (c_in, layers) = (lit(block.c_in), lit(block.layers));
                let doc = format!(
                    " Dense block {index}: {} layers, {} → {} channels at {}x{}.",
                    block.layers, block.c_in, block.c_out, block.height, block.width
                );
                let field = format_ident!("block{index}").into_token_stream();
                let ty = quote!(#rt::blocks::DenseBlock<#c_in, #layers, #growth, #bn_size>);
                (field, index, ty, doc)
            }
            StagePlan::Transition { index, plan: t } => {
                let (c_in, c_out) = (lit(t.c_in), lit(t.c_out));
                let doc = format!(
                    " Transition {index}: BN, ReLU, 1x1 conv, 2x2 average pool; {} → {} channels, {}x{}.",
                    t.c_in, t.c_out, t.height, t.width
                );
                let field = format_ident!("transition{index}").into_token_stream();
                (
                    field,
                    index,
                    quote!(#rt::blocks::Transition<#c_in, #c_out>),
                    doc,
                )
            }
            StagePlan::Head { .. } => (quote!(head), 0, head_ty.clone(), head_doc.clone()),
        };
        fields.push(quote!(#[doc = #doc] pub #field: #ty));
        visits.push((field, lit(index)));
    }
    let field_names: Vec<&TokenStream> = visits.iter().map(|(field, _)| field).collect();
    let stage_arms = visits.iter().enumerate().map(|(i, (field, index))| {
        let i = lit(i);
        quote!(#i => #rt::__private::BuildingBlock::stage(&self.#field, #index))
    });
    let stage_mut_arms = visits.iter().enumerate().map(|(i, (field, index))| {
        let i = lit(i);
        quote!(#i => #rt::__private::BuildingBlock::stage_mut(&mut self.#field, #index))
    });

    let arch_const = architecture_const(arch, rt);
    let [ic, ih, iw] = arch.input.map(lit);
    let output = plan.output.iter().map(|&d| lit(d));
    let (params, buffers, macs) = (
        Literal::u64_unsuffixed(plan.params),
        Literal::u64_unsuffixed(plan.buffers),
        Literal::u64_unsuffixed(plan.macs),
    );
    let name_str = name.to_string();
    let arena = lit(plan.arena_floats(1));
    // The arena at batch n: concatenation buffers, stem, transition and head scratch
    // scale with n; a dense block's scratch (one image) and the BN scale/shift do not.
    let one = plan.arena(1);
    let (concat, bn_params) = (lit(one.concat[0] + one.concat[1]), lit(one.bn_params));
    let (stem, block) = (lit(one.stem), lit(one.block));
    let (transition, head) = (lit(one.transition), lit(one.head));

    // Links to runtime items need a path that resolves in the user's crate: an absolute
    // one (`::densenet::runtime`, build scripts) does; `$crate` (the macros) does not in
    // rustdoc, so there the names stay plain code (the signatures still link them).
    let rt_text = rt.to_string().replace(' ', "");
    let link = |item: &str| match rt_text.starts_with("::") {
        true => format!("[`{item}`]({rt_text}::{item})"),
        false => format!("`{item}`"),
    };
    let load_errors = format!(
        " # Errors\n A {} naming the tensor and what was wrong.",
        link("LoadError")
    );
    let save_errors = format!(
        " # Errors\n A {} naming the file if it cannot be written.",
        link("SaveError")
    );
    let forward_errors = format!(
        " # Errors\n {} when a per-image shape is not [`Self::INPUT`];\n {} for N = 0.",
        link("Error::InputShape"),
        link("Error::EmptyBatch")
    );
    let forward_into_errors = format!(
        " # Errors\n As `forward`, and {}.",
        link("Error::OutputShape")
    );
    let model_doc = format!(
        " Saving, export, training and the rest come from {}, which this model implements.",
        link("Model")
    );
    let workspace_doc = format!(
        " [`forward`](Self::forward) into `out` (`(N, …)` of [`Self::OUTPUT`]) with every\n activation in `ws` (a {}): no allocation once `ws` has grown to the batch.",
        link("Workspace")
    );

    // A spec file carries no doc comment: say what the model is, so crates that deny
    // missing docs can use it.
    let has_doc = attrs.iter().any(|a| a.path().is_ident("doc"));
    let summary_doc = if has_doc {
        quote!(#[doc = ""])
    } else {
        let line = format!(
            " A DenseNet generated from its spec: {} blocks of {:?} layers, growth {}, {} parameters, input {:?}.",
            arch.blocks.len(),
            &arch.blocks[..],
            arch.growth,
            plan.params,
            arch.input
        );
        quote!(#[doc = #line] #[doc = ""])
    };

    let classifier_items = (arch.head == Head::Classifier).then(|| {
        quote! {
            /// Number of output classes.
            pub const CLASSES: usize = #classes;

            /// Softmax probabilities for an NCHW batch: `forward` followed by a softmax per row.
            ///
            #[doc = #forward_errors]
            pub fn predict(
                &self,
                x: #rt::ndarray::ArrayView4<'_, f32>,
            ) -> ::core::result::Result<#rt::ndarray::Array2<f32>, #rt::Error> {
                self.forward(x).map(#rt::softmax)
            }
        }
    });

    quote! {
        #(#attrs)*
        #summary_doc
        #[doc = #model_doc]
        #[derive(Clone, Debug)]
        #vis struct #name {
            #(#fields,)*
        }

        impl #name {
            /// The checked architecture this model was generated from.
            pub const ARCHITECTURE: #rt::spec::Architecture = #arch_const;
            /// Per-image input shape `[C, H, W]`; `forward` takes `(N, C, H, W)`.
            pub const INPUT: [usize; 3] = [#ic, #ih, #iw];
            /// Per-image output shape.
            pub const OUTPUT: &'static [usize] = &[#(#output),*];
            /// Trainable parameters.
            pub const PARAMS: u64 = #params;
            /// Non-trainable buffers (BatchNorm running mean and variance).
            pub const BUFFERS: u64 = #buffers;
            /// Multiply-accumulates per image (convolutions and the linear layer).
            pub const MACS: u64 = #macs;
            /// Floats of the activation arena (`Workspace`) at batch 1.
            pub const ARENA_FLOATS: usize = #arena;

            #classifier_items

            /// Every shape and count, stage by stage and layer by layer (Keras-style names).
            pub fn plan() -> &'static #rt::spec::Plan {
                static PLAN: #rt::__private::PlanCell = #rt::__private::PlanCell::new();
                PLAN.get_or_init(|| #rt::spec::Plan::new(&Self::ARCHITECTURE))
            }

            /// The per-layer table: name, kind, output shape, parameters.
            pub fn layers() -> &'static [#rt::spec::LayerPlan] {
                &Self::plan().layers
            }

            /// A Keras-style summary table; print it with `{}`.
            pub fn summary() -> #rt::Summary<'static> {
                #rt::Summary::new(#name_str, Self::plan())
            }

            /// A model with deterministic initial weights: Kaiming-normal convs, BatchNorm
            /// gamma 1 and beta 0, linear bias 0.
            pub fn init(seed: u64) -> Self {
                Self::init_with(&mut #rt::Rng::new(seed))
            }

            /// [`init`](Self::init) drawing from `rng`.
            pub fn init_with(rng: &mut #rt::Rng) -> Self {
                let mut stages =
                    #rt::__private::init_stages(&Self::ARCHITECTURE, Self::plan(), rng).into_iter();
                Self { #(#field_names: #rt::__private::take(&mut stages),)* }
            }

            /// Loads weights from safetensors bytes, e.g. embedded with `include_bytes!`.
            ///
            #[doc = #load_errors]
            pub fn from_safetensors_bytes(bytes: &[u8]) -> ::core::result::Result<Self, #rt::LoadError> {
                Self::from_safetensors_bytes_with(bytes, #rt::Naming::Auto)
            }

            /// [`from_safetensors_bytes`](Self::from_safetensors_bytes) read as `options`
            /// say: a naming scheme forced, or the full load options.
            ///
            #[doc = #load_errors]
            pub fn from_safetensors_bytes_with(
                bytes: &[u8],
                options: impl ::core::convert::Into<#rt::weights::LoadOptions>,
            ) -> ::core::result::Result<Self, #rt::LoadError> {
                #rt::__private::loaded(Self::init_with, bytes, options)
            }

            /// The weights as safetensors bytes in torchvision naming.
            pub fn to_safetensors_bytes(&self) -> #rt::__private::Vec<u8> {
                #rt::Model::to_safetensors_bytes(self)
            }

            /// Floats of the activation arena at batch `batch`, from sizes the macro
            /// computed (`plan().arena(batch)` has the breakdown).
            pub const fn arena_floats(batch: usize) -> usize {
                const fn max(a: usize, b: usize) -> usize {
                    if a > b { a } else { b }
                }
                let stem = #stem * batch;
                let transition = #transition * batch;
                let head = #head * batch;
                let scratch = max(max(stem, #block), max(transition, head));
                #concat * batch + #bn_params + scratch
            }

            /// Runs the network on an NCHW batch of any size; activations live in this
            /// thread's cached workspace, so only the output is allocated.
            ///
            #[doc = #forward_errors]
            pub fn forward(
                &self,
                x: #rt::ndarray::ArrayView4<'_, f32>,
            ) -> ::core::result::Result<#output_ty, #rt::Error> {
                #rt::Model::forward(self, x).map(|out| {
                    out.into_dimensionality()
                        .expect("the plan's output rank is the head's")
                })
            }

            #[doc = #workspace_doc]
            ///
            #[doc = #forward_into_errors]
            pub fn forward_into(
                &self,
                x: #rt::ndarray::ArrayView4<'_, f32>,
                ws: &mut #rt::Workspace,
                out: #output_view,
            ) -> ::core::result::Result<(), #rt::Error> {
                #rt::Model::forward_into(self, x, ws, out.into_dyn())
            }
        }

        // Files need `std`: without the runtime's `std` feature (bare metal) the runtime's
        // `__if_std!` drops these methods.
        #rt::__if_std! {
            impl #name {
                /// Loads weights from a safetensors file in torchvision/timm or Keras naming
                /// (detected from the keys).
                ///
                #[doc = #load_errors]
                pub fn load_safetensors(
                    path: impl ::core::convert::AsRef<#rt::__private::Path>,
                ) -> ::core::result::Result<Self, #rt::LoadError> {
                    Self::load_safetensors_with(path, #rt::Naming::Auto)
                }

                /// [`load_safetensors`](Self::load_safetensors) read as `options` say: a
                /// naming scheme forced, or the full load options (e.g. value checks off).
                ///
                #[doc = #load_errors]
                pub fn load_safetensors_with(
                    path: impl ::core::convert::AsRef<#rt::__private::Path>,
                    options: impl ::core::convert::Into<#rt::weights::LoadOptions>,
                ) -> ::core::result::Result<Self, #rt::LoadError> {
                    let bytes = #rt::__private::read(path.as_ref())?;
                    Self::from_safetensors_bytes_with(&bytes, options)
                }

                /// Writes the weights as safetensors in torchvision naming, atomically.
                ///
                #[doc = #save_errors]
                pub fn save_safetensors(
                    &self,
                    path: impl ::core::convert::AsRef<#rt::__private::Path>,
                ) -> ::core::result::Result<(), #rt::SaveError> {
                    #rt::Model::save_safetensors(self, path)
                }

                /// Writes a standard ONNX graph (opset 17, dynamic batch, weights included) for
                /// ONNX Runtime, Triton or TensorRT, atomically.
                ///
                #[doc = #save_errors]
                pub fn to_onnx(
                    &self,
                    path: impl ::core::convert::AsRef<#rt::__private::Path>,
                ) -> ::core::result::Result<(), #rt::SaveError> {
                    #rt::Model::to_onnx(self, path)
                }
            }
        }

        #[automatically_derived]
        impl #rt::Network for #name {
            fn architecture(&self) -> &#rt::spec::Architecture {
                static ARCHITECTURE: #rt::spec::Architecture = #name::ARCHITECTURE;
                &ARCHITECTURE
            }

            fn plan(&self) -> &#rt::spec::Plan {
                #name::plan()
            }

            fn stage(&self, index: usize) -> ::core::option::Option<#rt::StageRef<'_>> {
                ::core::option::Option::Some(match index {
                    #(#stage_arms,)*
                    _ => return ::core::option::Option::None,
                })
            }

            fn stage_mut(&mut self, index: usize) -> ::core::option::Option<#rt::StageMut<'_>> {
                ::core::option::Option::Some(match index {
                    #(#stage_mut_arms,)*
                    _ => return ::core::option::Option::None,
                })
            }
        }
    }
}

/// `Architecture { … }` as a const expression.
fn architecture_const(arch: &Architecture, rt: &TokenStream) -> TokenStream {
    let name = arch.name.as_ref();
    let [ic, ih, iw] = arch.input.map(lit);
    let stem = match arch.stem {
        Stem::ImageNet => quote!(#rt::spec::Stem::ImageNet),
        Stem::Cifar => quote!(#rt::spec::Stem::Cifar),
    };
    let head = match arch.head {
        Head::Classifier => quote!(#rt::spec::Head::Classifier),
        Head::Avg => quote!(#rt::spec::Head::Avg),
        Head::Max => quote!(#rt::spec::Head::Max),
        Head::None => quote!(#rt::spec::Head::None),
    };
    let blocks = arch.blocks.iter().map(|&b| lit(b));
    let bottleneck = match arch.bottleneck {
        Some(b) => {
            let b = lit(b);
            quote!(::core::option::Option::Some(#b))
        }
        None => quote!(::core::option::Option::None),
    };
    let init_features = lit(arch.init_features);
    let growth = lit(arch.growth);
    let classes = lit(arch.classes);
    let theta = Literal::f64_suffixed(arch.theta);
    let dropout = Literal::f32_suffixed(arch.dropout);
    let eps = Literal::f32_suffixed(arch.eps);
    quote! {
        #rt::spec::Architecture {
            name: #rt::__private::Cow::Borrowed(#name),
            input: [#ic, #ih, #iw],
            stem: #stem,
            init_features: #init_features,
            growth: #growth,
            blocks: #rt::__private::Cow::Borrowed(&[#(#blocks),*]),
            bottleneck: #bottleneck,
            theta: #theta,
            classes: #classes,
            head: #head,
            dropout: #dropout,
            eps: #eps,
        }
    }
}
