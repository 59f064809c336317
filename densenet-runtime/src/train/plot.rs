//! A PNG chart of a [`History`]: loss and accuracy per epoch, training and validation
//! (the `plot` feature).
//!
//! plotters draws into an RGB buffer in memory (its bitmap backend without its own
//! encoder), `png` encodes it, and the file is written atomically like every
//! file of this crate. Text uses a font bundled with the crate (DejaVu Sans cut down to
//! ASCII, 10 kB, `assets/`), registered with plotters under a family name of our own so
//! that nothing is looked up on the system and a user's own `sans-serif` is left alone.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::train::history::write;
use crate::train::{History, HistoryError};

/// The family name the bundled font is registered under.
const FAMILY: &str = "densenet-runtime-dejavu-sans";
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-ASCII.ttf");

impl History {
    /// The width and height in pixels of [`History::to_png`]'s chart.
    pub const PLOT_SIZE: (u32, u32) = (1000, 400);

    /// The history as a PNG chart of [`History::PLOT_SIZE`]: loss on the left, accuracy
    /// on the right, per epoch (1-based), training in blue
    /// ([`History::PLOT_TRAIN_COLOUR`]) and validation in orange
    /// ([`History::PLOT_VALIDATION_COLOUR`]) where there is validation. NaN and infinite
    /// values are left out of the curves.
    ///
    /// ```
    /// use densenet_runtime::train::{EpochStats, History};
    ///
    /// let epoch = |n: usize, loss: f32| EpochStats { epoch: n, lr: 0.1, loss,
    ///     train_accuracy: 1.0 / loss, validation: None, images_per_sec: 1e3,
    ///     seconds: 1.0, checkpoint: None };
    /// let history = History { epochs: vec![epoch(1, 2.0), epoch(2, 1.5), epoch(3, 1.2)] };
    /// let png = history.to_png()?;
    /// assert_eq!(&png[1..4], b"PNG");
    /// // history.save_plot("runs/history.png")?;
    /// # Ok::<(), densenet_runtime::train::HistoryError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`HistoryError::Empty`] for a history without epochs; [`HistoryError::Plot`] if
    /// plotters or the PNG encoder fails.
    pub fn to_png(&self) -> Result<Vec<u8>, HistoryError> {
        if self.epochs.is_empty() {
            return Err(HistoryError::Empty);
        }
        font()?;
        let (width, height) = History::PLOT_SIZE;
        let mut rgb = vec![0u8; width as usize * height as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_error)?;
            let (left, right) = root.split_horizontally(width / 2);
            // Each legend where its curves usually are not: loss falls, accuracy rises.
            let loss = Curves {
                title: "loss",
                legend: SeriesLabelPosition::UpperRight,
                train: self.points(|e| Some(e.loss)),
                validation: self.points(|e| e.validation.map(|v| v.loss)),
            };
            let accuracy = Curves {
                title: "accuracy",
                legend: SeriesLabelPosition::LowerRight,
                train: self.points(|e| Some(e.train_accuracy)),
                validation: self.points(|e| e.validation.map(|v| v.accuracy)),
            };
            let last = self.epochs.len() as f64;
            let epochs = 0.5..last + 0.5;
            let loss_top = loss.max().max(f64::MIN_POSITIVE) * 1.05;
            loss.draw(&left, epochs.clone(), 0.0..loss_top)?;
            accuracy.draw(&right, epochs, 0.0..1.0)?;
            root.present().map_err(plot_error)?;
        }
        let mut png = Vec::new();
        let mut encoder = png::Encoder::new(&mut png, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(plot_error)?;
        writer.write_image_data(&rgb).map_err(plot_error)?;
        writer.finish().map_err(plot_error)?;
        Ok(png)
    }

    /// Writes [`History::to_png`] to `path`, atomically.
    ///
    /// # Errors
    ///
    /// As [`History::to_png`]; [`HistoryError::Io`].
    pub fn save_plot(&self, path: impl AsRef<Path>) -> Result<(), HistoryError> {
        write(path.as_ref(), &self.to_png()?)
    }

    /// The colour of the training curves of [`History::to_png`], RGB.
    pub const PLOT_TRAIN_COLOUR: [u8; 3] = [31, 119, 180];
    /// The colour of the validation curves of [`History::to_png`], RGB.
    pub const PLOT_VALIDATION_COLOUR: [u8; 3] = [255, 127, 14];

    /// `(epoch, value)` of every epoch where `value` gives a finite number.
    fn points(&self, value: impl Fn(&crate::train::EpochStats) -> Option<f32>) -> Vec<(f64, f64)> {
        self.epochs
            .iter()
            .filter_map(|e| value(e).map(|v| (e.epoch as f64, f64::from(v))))
            .filter(|(_, v)| v.is_finite())
            .collect()
    }
}

/// One panel: a metric's training and validation curves.
struct Curves {
    title: &'static str,
    legend: SeriesLabelPosition,
    train: Vec<(f64, f64)>,
    validation: Vec<(f64, f64)>,
}

impl Curves {
    fn max(&self) -> f64 {
        self.train
            .iter()
            .chain(&self.validation)
            .map(|p| p.1)
            .fold(0.0, f64::max)
    }

    fn draw(
        &self,
        area: &DrawingArea<BitMapBackend<'_>, Shift>,
        x: Range<f64>,
        y: Range<f64>,
    ) -> Result<(), HistoryError> {
        let text = |size| (FAMILY, size).into_font();
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, text(20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x, y)
            .map_err(plot_error)?;
        let epochs = self.train.len().max(self.validation.len());
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels(epochs.clamp(2, 10))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(text(13))
            .axis_desc_style(text(14))
            .draw()
            .map_err(plot_error)?;
        let [r, g, b] = History::PLOT_TRAIN_COLOUR;
        let [vr, vg, vb] = History::PLOT_VALIDATION_COLOUR;
        for (points, colour, label) in [
            (&self.train, RGBColor(r, g, b), "train"),
            (&self.validation, RGBColor(vr, vg, vb), "validation"),
        ] {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            // Markers, so that a single epoch shows too.
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(self.legend.clone())
            .label_font(text(13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        Ok(())
    }
}

/// Registers the bundled font once per process.
fn font() -> Result<(), HistoryError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok()) {
        Ok(())
    } else {
        Err(HistoryError::Plot("the bundled font does not load".into()))
    }
}

fn plot_error(e: impl std::error::Error + Send + Sync + 'static) -> HistoryError {
    HistoryError::Plot(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{EpochStats, Evaluation};

    fn epoch(n: usize, loss: f32, validation: bool) -> EpochStats {
        EpochStats {
            epoch: n,
            lr: 0.1,
            loss,
            train_accuracy: 1.0 - loss / 4.0,
            validation: validation.then_some(Evaluation {
                loss: loss * 1.2,
                accuracy: 0.9 - loss / 4.0,
                correct: 0,
                total: 1,
                top_k: 1,
                top_k_correct: 0,
                top_k_accuracy: 0.0,
            }),
            images_per_sec: 1.0,
            seconds: 1.0,
            checkpoint: None,
        }
    }

    /// The RGB pixels of a PNG of [`History::PLOT_SIZE`], row by row.
    fn decode(png: &[u8]) -> Vec<[u8; 3]> {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut rgb).unwrap();
        assert_eq!((frame.width, frame.height), History::PLOT_SIZE);
        assert_eq!(frame.color_type, png::ColorType::Rgb);
        rgb.chunks(3).map(|p| [p[0], p[1], p[2]]).collect()
    }

    /// How many pixels of `png` have exactly `colour`, in the left and right halves.
    fn count(png: &[u8], colour: [u8; 3]) -> (usize, usize) {
        let width = History::PLOT_SIZE.0 as usize;
        let mut halves = (0, 0);
        for (i, pixel) in decode(png).into_iter().enumerate() {
            if pixel == colour {
                if i % width < width / 2 {
                    halves.0 += 1;
                } else {
                    halves.1 += 1;
                }
            }
        }
        halves
    }

    #[test]
    fn the_png_shows_both_curves_in_both_panels() {
        let history = History {
            epochs: (1..=6).map(|n| epoch(n, 3.0 / n as f32, true)).collect(),
        };
        let png = history.to_png().unwrap();
        let (train_loss, train_acc) = count(&png, History::PLOT_TRAIN_COLOUR);
        let (val_loss, val_acc) = count(&png, History::PLOT_VALIDATION_COLOUR);
        // Each curve spans the panel (about 400 px) two pixels wide, plus its markers.
        for (what, n) in [
            ("train loss", train_loss),
            ("train accuracy", train_acc),
            ("validation loss", val_loss),
            ("validation accuracy", val_acc),
        ] {
            assert!(n > 500, "{what}: {n} pixels");
        }
        // Text is drawn (dark pixels other than the black frame lines are plenty).
        let grey = decode(&png)
            .into_iter()
            .filter(|&[r, g, b]| r == g && g == b && (1..200).contains(&r))
            .count();
        assert!(grey > 200, "{grey} anti-aliased text pixels");
    }

    #[test]
    fn without_validation_only_training_curves_and_a_single_epoch_shows() {
        let png = History {
            epochs: vec![epoch(1, 2.0, false), epoch(2, f32::NAN, false)],
        }
        .to_png()
        .unwrap();
        let (loss, accuracy) = count(&png, History::PLOT_TRAIN_COLOUR);
        assert!(loss > 20 && accuracy > 20, "{loss}, {accuracy}");
        assert_eq!(count(&png, History::PLOT_VALIDATION_COLOUR), (0, 0));
    }

    #[test]
    fn an_empty_history_is_an_error_and_saves_are_atomic() {
        assert!(matches!(
            History::default().to_png(),
            Err(HistoryError::Empty)
        ));
        let dir = std::env::temp_dir().join(format!("densenet-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("history.png");
        let history = History {
            epochs: vec![epoch(1, 1.0, true)],
        };
        history.save_plot(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), history.to_png().unwrap());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
