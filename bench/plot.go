package bench

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Series is one named line of a plot.
type Series struct {
	Name string
	X, Y []float64
}

// linePlot writes a PNG line chart of series to dir/name.png and returns its path.
func linePlot(dir, name, title, xlabel, ylabel string, series ...Series) (string, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	for i, s := range series {
		xy := make(plotter.XYs, len(s.X))
		for j := range s.X {
			xy[j].X, xy[j].Y = s.X[j], s.Y[j]
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return "", fmt.Errorf("bench: plot %s: %w", name, err)
		}
		l.Color = plotutil.Color(i)
		pts.Color = plotutil.Color(i)
		pts.Shape = plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(s.Name, l, pts)
	}
	return savePlot(p, dir, name)
}

// barPlot writes grouped bars: one group per category, one bar per series.
func barPlot(dir, name, title, ylabel string, categories []string, series ...Series) (string, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Legend.Top = true
	w := vg.Points(14)
	for i, s := range series {
		b, err := plotter.NewBarChart(plotter.Values(s.Y), w)
		if err != nil {
			return "", fmt.Errorf("bench: plot %s: %w", name, err)
		}
		b.Color = plotutil.Color(i)
		b.Offset = w * vg.Length(float64(i)-float64(len(series)-1)/2)
		p.Add(b)
		p.Legend.Add(s.Name, b)
	}
	p.NominalX(categories...)
	return savePlot(p, dir, name)
}

// scatterPlot writes labelled points, Pareto points highlighted and joined.
func scatterPlot(dir, name, title, xlabel, ylabel string, pts []Point) (string, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	var all, front plotter.XYs
	var labels []string
	for _, q := range pts {
		all = append(all, plotter.XY{X: q.TokensPerSec, Y: q.USDPer1K})
		labels = append(labels, q.Label)
		if q.Pareto {
			front = append(front, plotter.XY{X: q.TokensPerSec, Y: q.USDPer1K})
		}
	}
	s, err := plotter.NewScatter(all)
	if err != nil {
		return "", fmt.Errorf("bench: plot %s: %w", name, err)
	}
	p.Add(s)
	lb, err := plotter.NewLabels(plotter.XYLabels{XYs: all, Labels: labels})
	if err == nil {
		for i := range lb.TextStyle {
			lb.TextStyle[i].Font.Size = vg.Points(6)
		}
		p.Add(lb)
	}
	if len(front) > 0 {
		sortXY(front)
		l, err := plotter.NewLine(front)
		if err == nil {
			l.Color = color.RGBA{R: 200, A: 255}
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
			p.Add(l)
			p.Legend.Add("Pareto front", l)
		}
	}
	return savePlot(p, dir, name)
}

func sortXY(xy plotter.XYs) {
	for i := 1; i < len(xy); i++ {
		for j := i; j > 0 && xy[j].X < xy[j-1].X; j-- {
			xy[j], xy[j-1] = xy[j-1], xy[j]
		}
	}
}

func savePlot(p *plot.Plot, dir, name string) (string, error) {
	path := filepath.Join(dir, name+".png")
	if err := p.Save(6*vg.Inch, 4*vg.Inch, path); err != nil {
		return "", fmt.Errorf("bench: save plot: %w", err)
	}
	return path, nil
}
